"""`SamplingParams(prompt_logprobs=k)`: the log-probability of every prompt token, from the prefill's own forward.

Oracle: HF transformers' log_softmax of its fp32 logits at each position (position i's logits predict token
i + 1; the first prompt token has None). Checked alone, batched with requests that do not ask, under chunked
prefill, under preemption (recompute must not duplicate entries), with the prefix cache (a second identical
request must still get every position), with n > 1, with max_tokens 0, with asynchronous scheduling and
with speculative decoding.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine import LLM, SamplingParams
from engine.sampling_params import ParamError

TOL = 1e-4


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def hf_logprobs(model_dir):
    """prompt -> [num_prompt - 1, vocab] fp32 log-probabilities of tokens 1.. from HF transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(prompt: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)[:-1]

    return run


def assert_matches_hf(prompt_lps, prompt: list[int], ref: torch.Tensor, k: int) -> None:
    assert len(prompt_lps) == len(prompt)
    assert prompt_lps[0] is None
    for pos in range(1, len(prompt)):
        entry, row = prompt_lps[pos], ref[pos - 1]
        assert entry.token_id == prompt[pos]
        assert math.isclose(entry.logprob, row[prompt[pos]].item(), abs_tol=TOL), pos
        assert entry.rank == int((row > row[prompt[pos]]).sum()) + 1
        top_vals, top_ids = row.topk(k)
        assert list(entry.top) == top_ids.tolist()
        assert all(math.isclose(entry.top[t], v, abs_tol=TOL) for t, v in zip(top_ids.tolist(), top_vals.tolist()))


def test_prompt_logprobs_equal_hf_alone_and_batched_with_requests_that_do_not_ask(model_dir, hf_logprobs, prompts_fn):
    prompts = prompts_fn(4, [9, 23, 5, 17], seed=3)
    params = [SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=3 if i % 2 == 0 else None)
              for i in range(4)]
    outs = LLM(model_dir, device="cpu").generate(prompts, params)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        if i % 2:
            assert out.prompt_logprobs is None
        else:
            assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 3)


def test_prompt_logprobs_are_collected_chunk_by_chunk_under_chunked_prefill(model_dir, hf_logprobs, prompts_fn):
    prompts = prompts_fn(3, [40, 13, 29], seed=5)
    llm = LLM(model_dir, device="cpu", max_num_batched_tokens=7)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=2))
    for prompt, out in zip(prompts, outs):
        assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 2)


def test_preemption_recompute_does_not_duplicate_or_lose_entries(model_dir, hf_logprobs, prompts_fn):
    prompts = prompts_fn(4, [30, 26, 21, 18], seed=7)
    llm = LLM(model_dir, device="cpu", block_size=4, num_kv_blocks=22, max_num_batched_tokens=16)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, prompt_logprobs=1))
    assert llm.engine.scheduler.num_preemptions_total > 0  # the setup really preempts
    for prompt, out in zip(prompts, outs):
        assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 1)


def test_same_prompt_twice_with_prefix_caching_gets_every_position_both_times(model_dir, hf_logprobs, prompts_fn):
    prompt = prompts_fn(1, [37], seed=9)[0]
    llm = LLM(model_dir, device="cpu", block_size=4, enable_prefix_caching=True)
    plain = SamplingParams(temperature=0, max_tokens=2)
    asking = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=2)
    warm = llm.generate([prompt], plain)[0]  # fills the prefix cache with this prompt's blocks
    first = llm.generate([prompt], asking)[0]
    second = llm.generate([prompt], asking)[0]
    assert first.prompt_logprobs == second.prompt_logprobs
    assert_matches_hf(first.prompt_logprobs, prompt, hf_logprobs(prompt), 2)
    assert first.num_cached_tokens == 0  # it skipped the lookup for its own prompt...
    again = llm.generate([prompt], plain)[0]
    assert again.num_cached_tokens == 36  # ...while its blocks, and the first request's, stay cached for others
    assert warm.token_ids == first.token_ids == again.token_ids


def test_n_choices_each_get_the_prompt_logprobs_computed_once(model_dir, hf_logprobs, prompts_fn):
    prompt = prompts_fn(1, [21], seed=11)[0]
    llm = LLM(model_dir, device="cpu", block_size=4)
    out = llm.generate([prompt], SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=3, prompt_logprobs=0))[0]
    assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 0)
    assert [len(c.token_ids) for c in out.outputs] == [3, 3, 3]


def test_max_tokens_zero_computes_the_prompt_only(model_dir, hf_logprobs, prompts_fn):
    prompt = prompts_fn(1, [12], seed=13)[0]
    llm = LLM(model_dir, device="cpu")
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=0, prompt_logprobs=1))[0]
    assert out.token_ids == [] and out.text == "" and out.finish_reason == "length"
    assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 1)
    assert llm.engine.kv.pool.num_used_blocks == 0


def test_max_tokens_zero_needs_prompt_logprobs_and_k_is_bounded():
    with pytest.raises(ParamError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ParamError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ParamError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)


def test_one_token_prompt_has_a_single_none_entry(model_dir):
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    out = LLM(model_dir, device="cpu").generate([[5]], params)[0]
    assert out.prompt_logprobs == [None]


def test_async_scheduling_gives_the_same_prompt_logprobs(model_dir, prompts_fn):
    prompts = prompts_fn(3, [19, 33, 8], seed=15)
    params = SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=2)
    sync = LLM(model_dir, device="cpu", max_num_batched_tokens=9).generate(prompts, params)
    asyn = LLM(model_dir, device="cpu", max_num_batched_tokens=9, async_scheduling=True).generate(prompts, params)
    assert [o.prompt_logprobs for o in sync] == [o.prompt_logprobs for o in asyn]
    assert [o.token_ids for o in sync] == [o.token_ids for o in asyn]


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculative_decoding_keeps_prompt_logprobs_and_its_output(model_dir, hf_logprobs, method):
    prompt = [7, 8, 9, 10, 7, 8, 9, 10, 7, 8, 9, 10, 7, 8]  # repetitive: n-gram drafts get proposed
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
    if method == "draft":  # the target as its own draft: every draft is accepted
        spec = {"method": "draft", "model": model_dir, "num_speculative_tokens": 3}
    params = SamplingParams(temperature=0, max_tokens=8, prompt_logprobs=1)
    plain = LLM(model_dir, device="cpu").generate([prompt], params)[0]
    out = LLM(model_dir, device="cpu", speculative_config=spec).generate([prompt], params)[0]
    assert out.token_ids == plain.token_ids
    assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 1)


@pytest.mark.slow  # starts two worker processes
def test_tensor_parallel_ranks_give_the_same_prompt_logprobs(model_dir, hf_logprobs, prompts_fn):
    prompts = prompts_fn(2, [21, 11], seed=17)
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=2)
    llm = LLM(model_dir, device="cpu", tensor_parallel_size=2, cpu_threads=1, max_num_batched_tokens=8)
    try:
        outs = llm.generate(prompts, params)
    finally:
        llm.shutdown()
    for prompt, out in zip(prompts, outs):
        assert_matches_hf(out.prompt_logprobs, prompt, hf_logprobs(prompt), 2)


def test_only_the_sequences_that_ask_get_prompt_rows_chunk_by_chunk():
    """The worker's plan for one step: rows at positions start .. min(end, prompt - 1) - 1 of each asking
    sequence, predicting the tokens after them; nothing for the others or past the prompt."""
    import numpy as np

    from engine.step import CachedSeq, NewSeq, SamplingOptions
    from engine.worker.prompt_logprobs import plan
    from engine.worker.seq_states import SeqState

    asks, plain = SamplingOptions(prompt_logprobs=2), SamplingOptions()
    prompt = [10, 11, 12, 13, 14, 15]
    seqs = [NewSeq("a", tuple(prompt), 6, (0, 1), 0, 3, False, asks),       # chunk 1: positions 0..2
            NewSeq("b", tuple(prompt), 6, (2, 3), 0, 6, True, plain),       # does not ask
            CachedSeq("c", (), (), 3, 3, True),                             # chunk 2: positions 3..5 (5 samples)
            CachedSeq("d", (), (), 6, 1, True)]                             # decoding: past its prompt
    states = [SeqState("a", prompt, 6, [0, 1], asks), SeqState("b", prompt, 6, [2, 3], plain),
              SeqState("c", prompt, 6, [4, 5], asks), SeqState("d", prompt + [99], 6, [6, 7], asks)]
    p = plan(seqs, states, np.array([3, 6, 3, 1]))
    assert p.spans == (("a", 1, 3, 2), ("c", 4, 2, 2))
    assert p.rows.tolist() == [0, 1, 2, 9, 10]  # a's rows 0-2; b's rows 3-8 are skipped; c's first two rows
    assert p.targets.tolist() == [11, 12, 13, 14, 15]
    assert plan(seqs[1:2], states[1:2], np.array([6])) is None
