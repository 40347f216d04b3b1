"""Sampling: seeds make draws independent of the batch; top-k / top-p / min-p restrict the support;
penalties and logprobs follow their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from engine import LLM, SamplingParams
from engine.sample.sampler import Sampler, SamplingRow, apply_penalties, apply_top_k_top_p
from engine.sample.tables import PenaltyCounts
from engine.step import SamplingOptions

PROBS = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
LOGITS = PROBS.log()
DRAWS = 4000


def rows(params: SamplingParams, n: int, seed=None, tokens=(5, 5), prompt_len=1) -> list[SamplingRow]:
    return [SamplingRow(f"r{i}", SamplingOptions.from_params(params, seed), list(tokens), prompt_len, ()) for i in range(n)]


def draw(params: SamplingParams, n: int = DRAWS, logits: torch.Tensor = LOGITS) -> torch.Tensor:
    sampler = Sampler(torch.device("cpu"), seed=0)
    out = sampler(logits.expand(n, -1).clone(), rows(params, n))
    return torch.bincount(torch.tensor(out.token_ids), minlength=logits.numel())


def penalized(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    """`logits` [1, V] after `row`'s penalties, with its token counts built the way the worker builds them."""
    vocab = logits.shape[1]
    counts = PenaltyCounts(vocab, torch.device("cpu"))
    counts.ensure(1)
    init = PenaltyCounts.init_arrays([0], [row.all_token_ids], [row.num_prompt_tokens], vocab)
    counts.apply_init(*[torch.from_numpy(a) for a in init])
    out_counts, prompt_mask = counts.gather(torch.tensor([0]))
    o = row.options
    return apply_penalties(logits, out_counts, prompt_mask, torch.tensor([o.presence_penalty]),
                           torch.tensor([o.frequency_penalty]), torch.tensor([o.repetition_penalty]))


def support(counts: torch.Tensor) -> set[int]:
    return set(torch.nonzero(counts).flatten().tolist())


def test_temperature_one_samples_the_model_distribution():
    freq = draw(SamplingParams(temperature=1.0)).float() / DRAWS
    # 4000 draws: each frequency within 4 standard errors of its probability
    tol = 4 * torch.sqrt(PROBS * (1 - PROBS) / DRAWS)
    assert torch.all((freq - PROBS).abs() <= tol), freq


def test_greedy_takes_the_argmax():
    assert support(draw(SamplingParams(temperature=0.0), n=50)) == {0}


def test_top_k_keeps_exactly_the_k_most_likely_tokens():
    assert support(draw(SamplingParams(temperature=1.0, top_k=3))) == {0, 1, 2}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # cumulative: 0.40, 0.65, 0.80, ... -> p = 0.7 needs the first three tokens
    assert support(draw(SamplingParams(temperature=1.0, top_p=0.7))) == {0, 1, 2}
    assert support(draw(SamplingParams(temperature=1.0, top_p=0.3))) == {0}


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability():
    # threshold 0.3 * 0.40 = 0.12 -> tokens with p >= 0.12
    assert support(draw(SamplingParams(temperature=1.0, min_p=0.3))) == {0, 1, 2}


def test_top_k_beyond_the_vocabulary_keeps_every_token():
    assert support(draw(SamplingParams(temperature=1.0, top_k=2**70))) == set(range(len(PROBS)))


def test_top_k_and_top_p_combine_per_row():
    logits = torch.stack([LOGITS, LOGITS, LOGITS])
    out = apply_top_k_top_p(logits.clone(), [2, 0, 4], [1.0, 0.5, 0.5])
    finite = [set(torch.nonzero(torch.isfinite(r)).flatten().tolist()) for r in out]
    assert finite == [{0, 1}, {0, 1}, {0, 1}]


def test_low_temperature_sharpens_the_distribution():
    counts = draw(SamplingParams(temperature=0.1))
    assert counts[0] > 0.95 * DRAWS


def test_seeded_rows_do_not_depend_on_the_rest_of_the_batch():
    p = SamplingParams(temperature=1.0, seed=123)
    a = Sampler(torch.device("cpu"), seed=0)(LOGITS.expand(1, -1).clone(), rows(p, 1, seed=123))
    noise = SamplingParams(temperature=1.0)
    b = Sampler(torch.device("cpu"), seed=99)(LOGITS.expand(4, -1).clone(),
                                              rows(noise, 3) + [SamplingRow("r0", SamplingOptions.from_params(p, 123), [5, 5], 1, ())])
    assert a.token_ids[0] == b.token_ids[3]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    r = SamplingRow("r", SamplingOptions.from_params(SamplingParams(repetition_penalty=2.0), None), [0, 1], 1, ())
    out = penalized(logits.clone(), r)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    logits = torch.zeros(1, 4)
    # prompt [3], output [1, 1, 2]
    r = SamplingRow("r", SamplingOptions.from_params(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), None), [3, 1, 1, 2], 1, ())
    out = penalized(logits.clone(), r)
    assert out.tolist() == [[0.0, -1.0, -0.75, 0.0]]


def test_forbidden_tokens_are_never_sampled():
    r = [SamplingRow(f"r{i}", SamplingOptions.from_params(SamplingParams(temperature=1.0), None), [1], 1, (0, 1)) for i in range(500)]
    out = Sampler(torch.device("cpu"), 0)(LOGITS.expand(500, -1).clone(), r)
    assert not {0, 1} & set(out.token_ids)


def test_logprobs_report_the_chosen_token_and_the_top_n():
    r = rows(SamplingParams(temperature=0.0, logprobs=3), 1)
    out = Sampler(torch.device("cpu"), 0)(LOGITS.unsqueeze(0).clone(), r)
    lp = out.logprobs[0]
    assert lp.token_id == 0 and math.isclose(lp.logprob, math.log(0.40), rel_tol=1e-5)
    assert list(lp.top) == [0, 1, 2]
    assert [round(math.exp(v), 5) for v in lp.top.values()] == [0.40, 0.25, 0.15]


def test_same_seed_gives_same_tokens_whatever_the_batch(tiny_model_dir, prompts_fn):
    llm = LLM(tiny_model_dir("llama"), device="cpu")
    prompt = prompts_fn(1, [9], seed=3)[0]
    seeded = SamplingParams(temperature=1.0, max_tokens=10, seed=42, ignore_eos=True)
    alone = llm.generate([prompt], seeded)[0].token_ids
    others = prompts_fn(5, [4, 20, 33], seed=4)
    mixed = llm.generate(others[:3] + [prompt] + others[3:],
                         [SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)] * 3 + [seeded]
                         + [SamplingParams(temperature=0.7, max_tokens=10, ignore_eos=True)] * 2)
    assert mixed[3].token_ids == alone
    other_seed = llm.generate([prompt], SamplingParams(temperature=1.0, max_tokens=10, seed=43, ignore_eos=True))
    assert other_seed[0].token_ids != alone


def test_n_sequences_share_the_prompt_blocks_and_differ(tiny_model_dir, prompts_fn):
    llm = LLM(tiny_model_dir("llama"), device="cpu", block_size=16)
    prompt = prompts_fn(1, [40], seed=5)[0]
    out = llm.generate([prompt], SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=7, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 8 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    pool = llm.engine.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


# ---- the device sampler: counter-based draws, vectorized stages --------------------------------------------

def noise_for(seeds: list[int], positions: list[int], vocab: int) -> torch.Tensor:
    from engine.sample.noise import exponential_noise, row_keys, token_keys

    keys = row_keys(torch.tensor(seeds, dtype=torch.int64), torch.tensor(positions, dtype=torch.int64))
    return exponential_noise(keys, token_keys(vocab, torch.device("cpu")))


def test_counter_noise_is_a_pure_function_of_seed_position_and_token():
    alone = noise_for([42], [7], 1000)
    in_a_batch = noise_for([1, 42, -5], [0, 7, 7], 1000)
    assert torch.equal(alone[0], in_a_batch[1])
    assert torch.isfinite(in_a_batch).all() and (in_a_batch > 0).all()
    # another position, another seed, or a seed differing only in its high 32 bits: other noise
    for seeds, positions in (([42], [8]), ([43], [7]), ([42 + 2**32], [7]), ([42 - 2**63], [7])):
        assert not torch.equal(noise_for(seeds, positions, 1000)[0], alone[0]), (seeds, positions)


def test_counter_noise_is_exponential():
    noise = noise_for(list(range(40)), [3] * 40, 1000).flatten()
    # Exp(1): mean 1, P(E > 1) = 1/e, P(E > 3) = e^-3; 40,000 draws
    assert abs(noise.mean().item() - 1.0) < 0.03
    assert abs((noise > 1).float().mean().item() - math.exp(-1)) < 0.015
    assert abs((noise > 3).float().mean().item() - math.exp(-3)) < 0.005


def test_one_seeded_sequence_samples_the_distribution_over_its_positions():
    """What one sequence sees: a fresh draw at every output position, together following the model."""
    sampler = Sampler(torch.device("cpu"), seed=0)
    options = SamplingOptions.from_params(SamplingParams(temperature=1.0), seed=2024)
    rows_ = [SamplingRow("s", options, [9] * (1 + pos), 1, ()) for pos in range(DRAWS)]  # output positions 0..
    counts = torch.bincount(torch.tensor(sampler(LOGITS.expand(DRAWS, -1).clone(), rows_).token_ids),
                            minlength=len(PROBS))
    tol = 4 * torch.sqrt(PROBS * (1 - PROBS) / DRAWS)
    assert torch.all((counts.float() / DRAWS - PROBS).abs() <= tol), counts
    # consecutive positions are independent: P(same token twice in a row) = sum p^2
    toks = sampler(LOGITS.expand(DRAWS, -1).clone(), rows_).token_ids
    repeats = sum(a == b for a, b in zip(toks, toks[1:])) / (DRAWS - 1)
    assert abs(repeats - (PROBS ** 2).sum().item()) < 0.03


def mixed_rows() -> list[SamplingRow]:
    """One row of each kind: every stage of the sampler is used by some row and not by the others."""
    kinds = [
        dict(temperature=0.0),
        dict(temperature=0.0, repetition_penalty=1.5, logprobs=2),
        dict(temperature=0.9, seed=11),
        dict(temperature=1.2, top_k=5, seed=12),
        dict(temperature=1.0, top_p=0.5, seed=13, logprobs=0),
        dict(temperature=0.7, min_p=0.2, seed=14),
        dict(temperature=1.0, presence_penalty=1.0, frequency_penalty=0.5, seed=15, logprobs=4),
        dict(temperature=1.0, seed=16, min_tokens=3, stop_token_ids=[1, 2]),
    ]
    out = []
    for i, k in enumerate(kinds):
        seed = k.pop("seed", None)
        options = SamplingOptions.from_params(SamplingParams(**k), seed=seed, eos_token_ids=(0,))
        tokens = [3, 1, 4, 1, 5, 9, 2, 6][:3 + i]
        out.append(SamplingRow(f"m{i}", options, tokens, 2, options.forbidden_now(len(tokens) - 2)))
    return out


def test_every_row_of_a_mixed_batch_samples_what_it_samples_alone():
    """Each stage runs only on the rows that use it and leaves the others bit-identical, so a row's token
    and logprobs never depend on the rest of the batch."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(8, 40, generator=g) * 3
    rows_ = mixed_rows()
    together = Sampler(torch.device("cpu"), 0)(logits.clone(), rows_)
    for i, row in enumerate(rows_):
        alone = Sampler(torch.device("cpu"), 0)(logits[i:i + 1].clone(), [row])
        assert together.token_ids[i] == alone.token_ids[0], row.options
        assert together.logprobs[i] == alone.logprobs[0], row.options
    assert [lp is not None for lp in together.logprobs] == [False, True, False, False, True, False, True, False]
    assert together.logprobs[4].top == {} and len(together.logprobs[6].top) == 4
    assert together.token_ids[7] not in (0, 1, 2)  # forbidden until min_tokens


def test_an_all_greedy_batch_is_one_argmax_and_draws_no_noise(monkeypatch):
    import engine.sample.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "exponential_noise", lambda *a: pytest.fail("greedy rows drew noise"))
    logits = torch.randn(16, 100, generator=torch.Generator().manual_seed(1))
    out = Sampler(torch.device("cpu"), 0)(logits.clone(), rows(SamplingParams(temperature=0.0), 16))
    assert out.token_ids == logits.argmax(dim=-1).tolist()


def test_seeded_output_does_not_depend_on_preemption(tiny_model_dir, prompts_fn):
    """A tiny pool preempts and recomputes; seeded sampling with penalties still gives the tokens of the run
    with room to spare (the draw of each position is a function of the seed and the position)."""
    prompts = prompts_fn(4, [20, 30], seed=21)
    params = SamplingParams(temperature=1.0, top_p=0.95, presence_penalty=0.4, repetition_penalty=1.2,
                            max_tokens=12, seed=99, ignore_eos=True)
    roomy = LLM(tiny_model_dir("llama"), device="cpu", block_size=4, num_kv_blocks=200).generate(prompts, params)
    tight = LLM(tiny_model_dir("llama"), device="cpu", block_size=4, num_kv_blocks=14)
    preemptions = 0
    original = tight.engine.step

    def counting_step():
        nonlocal preemptions
        out = original()
        preemptions += out.stats.num_preemptions
        return out

    tight.engine.step = counting_step
    assert [o.token_ids for o in tight.generate(prompts, params)] == [o.token_ids for o in roomy]
    assert preemptions > 0


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_penalty_counts_on_the_device_follow_the_sampled_tokens(tiny_model_dir, prompts_fn, async_scheduling):
    llm = LLM(tiny_model_dir("llama"), device="cpu", async_scheduling=async_scheduling)
    engine = llm.engine
    params = SamplingParams(temperature=1.0, frequency_penalty=0.5, max_tokens=20, seed=3, ignore_eos=True)
    engine.add_request("p", prompts_fn(1, [9], seed=2)[0], params)
    for _ in range(8):
        engine.step()
    req, runner = engine.scheduler.requests["p"], engine.runner
    slot = runner.seqs["p"].slot
    counts = runner.penalties.counts[slot]
    # every output token so far, plus (asynchronous) the one sampled by the step still in flight
    assert counts.sum().item() == req.num_output_tokens + req.num_pending_tokens
    assert req.num_pending_tokens == (1 if async_scheduling else 0)
    expected = torch.bincount(torch.tensor(req.output_token_ids), minlength=counts.numel())
    if async_scheduling:
        expected[runner._prev_tokens[0]] += 1
    assert torch.equal(counts.long(), expected)
