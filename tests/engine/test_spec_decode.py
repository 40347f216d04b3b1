"""Speculative decoding (n-gram) leaves greedy output unchanged, token for token, against the same engine
without it and against HF transformers, whatever the batching: several sequences, chunked prefill,
preemption, prefix-cache hits; and stop conditions, logprobs and n > 1 behave inside an accepted run.

The tiny models here repeat tokens in runs (`save_loopy_model`), so prompt lookup proposes drafts that are
partly accepted and partly rejected: each test also checks that speculation really happened (and failed)."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from engine.engine import LLMEngine
from tests.engine.spec_helpers import repetitive_prompts, run_all, save_loopy_model

VOCAB = 512
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3,
         "disable_by_batch_size": 64}
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def loopy(tmp_path_factory):
    cache: dict[str, str] = {}

    def get(arch: str = "llama") -> str:
        if arch not in cache:
            cache[arch] = save_loopy_model(tmp_path_factory.mktemp(f"loopy-{arch}"), arch)
        return cache[arch]

    return get


def engines(model_dir: str, **kwargs) -> tuple[LLMEngine, LLMEngine]:
    """The same engine without and with speculation."""
    return (LLMEngine.from_args(model=model_dir, device="cpu", **kwargs),
            LLMEngine.from_args(model=model_dir, device="cpu", speculative_config=NGRAM, **kwargs))


def assert_speculated_and_rejected(stats) -> None:
    assert stats.num_draft_tokens > 0
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # both outcomes were exercised


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_batched_greedy_is_unchanged_and_matches_hf(arch, loopy, hf_greedy_fn):
    prompts = repetitive_prompts(6, VOCAB)
    plain, spec = engines(loopy(arch))
    want, _, _ = run_all(plain, prompts, GREEDY)
    got, stats, _ = run_all(spec, prompts, GREEDY)
    assert got == want
    assert [v[0] for v in got.values()] == hf_greedy_fn(loopy(arch), prompts, GREEDY.max_tokens)
    assert_speculated_and_rejected(stats)


def test_chunked_prefill_and_a_tight_token_budget(loopy):
    # 7 tokens a step: prompts are chunked, and drafts are cut to what is left of the budget
    prompts = repetitive_prompts(5, VOCAB, seed=1)
    plain, spec = engines(loopy(), max_num_batched_tokens=7)
    want, _, _ = run_all(plain, prompts, GREEDY)
    got, stats, _ = run_all(spec, prompts, GREEDY)
    assert got == want
    assert_speculated_and_rejected(stats)


def test_preemption(loopy):
    # 14 blocks of 4 tokens for 6 sequences of up to 53 tokens: sequences are preempted and recomputed
    prompts = repetitive_prompts(6, VOCAB, seed=2)
    plain, spec = engines(loopy(), block_size=4, num_kv_blocks=14)
    want, _, _ = run_all(plain, prompts, GREEDY)
    got, stats, _ = run_all(spec, prompts, GREEDY)
    assert got == want
    assert spec.scheduler.num_preemptions_total > 0
    assert_speculated_and_rejected(stats)
    assert spec.kv.pool.num_used_blocks == 0  # every block came back


def test_prefix_cache_hits(loopy):
    # the same prompts twice, one after the other: the second round hits the cached blocks, written in part
    # by verification steps
    prompts = repetitive_prompts(3, VOCAB, seed=3, length=40)
    plain, spec = engines(loopy(), block_size=4)
    want, _, _ = run_all(plain, prompts, GREEDY)
    first, _, _ = run_all(spec, prompts, GREEDY)
    hits_before = spec.kv.pool.num_used_blocks
    continued = [p + t[0][:20] for p, t in zip(prompts, first.values())]  # prompt + output: hits past the prompt
    plain_cont, _, _ = run_all(plain, continued, GREEDY)
    again, stats, _ = run_all(spec, continued, GREEDY)
    assert first == want and again == plain_cont
    assert hits_before == 0
    assert_speculated_and_rejected(stats)


def test_max_tokens_and_eos_end_a_run_exactly(loopy):
    prompts = repetitive_prompts(4, VOCAB, seed=4)
    plain, spec = engines(loopy())
    params = [SamplingParams(temperature=0, max_tokens=m) for m in (1, 2, 5, 9)]
    want, _, want_x = run_all(plain, prompts, params)
    got, _, got_x = run_all(spec, prompts, params)
    assert got == want
    assert [len(v[0]) for v in got.values()] == [1, 2, 5, 9]
    # EOS: make a token the model emits mid-run a stop token, so it ends a run of accepted drafts
    stop_id = want["r3"][0][6]
    p = SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id])
    want, _, want_x = run_all(plain, prompts, p)
    got, _, got_x = run_all(spec, prompts, p)
    assert got == want and got_x == want_x
    assert got["r3"][0][-1] == stop_id and got_x["r3"][0][0] == "stop"


@pytest.fixture(scope="module")
def default_engines():
    """The default model (SmolLM2-135M-Instruct) without and with speculation."""
    return engines(None, max_model_len=512)


def test_the_default_model_stop_strings_logprobs_and_n_inside_accepted_runs(default_engines):
    from engine.tools.spec_workload import repetitive_prompts as shipped

    plain, spec = default_engines
    COPY_PROMPT = shipped(plain.tokenizer)[4]  # "Correct the spelling mistakes in this email ..."
    base = SamplingParams(temperature=0, max_tokens=24, logprobs=2)
    want, _, want_x = run_all(plain, [COPY_PROMPT], base)
    got, stats, got_x = run_all(spec, [COPY_PROMPT], base)
    assert got == want
    assert stats.num_accepted_tokens >= 8  # the answer copies the prompt: most drafts are right
    assert [lp.token_id for lp in got_x["r0"][0][2]] == got["r0"][0]
    for a, b in zip(got_x["r0"][0][2], want_x["r0"][0][2]):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.top.keys() == b.top.keys()
    # a stop string from the middle of the output ends the text wherever it falls in an accepted run
    text = want_x["r0"][0][1]
    stop = "confirm"
    assert stop in text
    p = SamplingParams(temperature=0, max_tokens=24, stop=[stop], n=2)
    want, _, want_x = run_all(plain, [COPY_PROMPT], p)
    got, _, got_x = run_all(spec, [COPY_PROMPT], p)
    assert got == want and got_x == want_x
    assert got_x["r0"][0][0] == "stop" and stop not in got_x["r0"][0][1]
    assert got_x["r0"][1] == got_x["r0"][0]  # both greedy choices


def test_large_batches_do_not_speculate(loopy):
    prompts = repetitive_prompts(6, VOCAB)
    spec = LLMEngine.from_args(model=loopy(), device="cpu",
                               speculative_config={**NGRAM, "disable_by_batch_size": 5})
    _, stats, _ = run_all(spec, prompts, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    # 6 sequences run together for all 3 steps: above the threshold of 5, so no step speculates
    assert stats.num_draft_tokens == 0


def test_unsupported_combinations_are_refused(loopy):
    with pytest.raises(ValueError, match="speculative_config: not supported with async_scheduling"):
        LLMEngine.from_args(model=loopy(), device="cpu", async_scheduling=True,
                            speculative_config=NGRAM)
    with pytest.raises(ValueError, match="speculative_config: method .ngram. is not supported with tensor_parallel_size"):
        LLMEngine.from_args(model=loopy(), device="cpu", tensor_parallel_size=2,
                            speculative_config=NGRAM)


def test_a_grammar_request_beside_speculating_ones_gets_no_drafts_and_a_valid_answer(tmp_path):
    # a grammar's bitmask is known for the next position only, so its sequence decodes one token a step while
    # the unconstrained ones speculate in the same batch; their output is unchanged
    pytest.importorskip("xgrammar")
    from engine.structured.spec import StructuredOutputsParams

    model = save_loopy_model(tmp_path / "loopy", with_tokenizer=True)
    vocab = LLMEngine.from_args(model=model, device="cpu").model_config.vocab_size
    prompts = repetitive_prompts(4, min(vocab, 4000), seed=3)
    choice = SamplingParams(temperature=1.0, seed=7, max_tokens=16,
                            structured_outputs=StructuredOutputsParams(choice=["alpha", "beta gamma"]))
    params = [GREEDY] * 3 + [choice]
    plain, spec = engines(model)
    want, _, _ = run_all(plain, prompts, params)
    got, stats, extra = run_all(spec, prompts, params)
    free = [rid for rid in got if rid != list(got)[-1]]
    assert {rid: got[rid] for rid in free} == {rid: want[rid] for rid in free}
    finish, text, _ = extra[list(got)[-1]][0]
    assert (finish, text) in {("stop", "alpha"), ("stop", "beta gamma")}
    assert stats.num_draft_tokens > 0
