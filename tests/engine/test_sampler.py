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
