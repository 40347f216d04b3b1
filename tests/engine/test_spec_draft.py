"""Speculative decoding with a draft model (engine.spec_decode.draft_model): greedy output unchanged token for
token, whatever the batching (several sequences, chunked prefill, preemption, prefix-cache hits); a draft
equal to the target accepts every draft; the draft's own KV blocks come back on finish, abort and
preemption, and the blocks rejected drafts took are freed at once, for the target and the draft.

The target is a "loopy" tiny model (runs of one token broken by jumps); the draft is the same random model
with its layers scaled differently (`DRAFT_SCALE`), so it agrees with the target often but not always."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from engine.core.kv_cache_manager import cdiv
from engine.engine import LLMEngine
from tests.engine.spec_helpers import repetitive_prompts, run_all, save_loopy_model

VOCAB = 512
DRAFT_SCALE = 0.3  # the target's layers are scaled by 0.08
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft-models")
    return {"target": save_loopy_model(root / "target"),
            "draft": save_loopy_model(root / "draft", layer_scale=DRAFT_SCALE)}


def draft_cfg(model: str | None = None, **kw) -> dict:
    return {"method": "draft", "model": model, "num_speculative_tokens": 3, "disable_by_batch_size": 64, **kw}


def assert_no_blocks_held(engine: LLMEngine) -> None:
    assert engine.kv.pool.num_used_blocks == 0
    assert engine.drafter.kv.pool.num_used_blocks == 0
    assert not engine.drafter._seqs


def test_a_draft_equal_to_the_target_accepts_every_draft(models, hf_greedy_fn):
    prompts = repetitive_prompts(6, VOCAB)
    plain = LLMEngine.from_args(model=models["target"], device="cpu")
    spec = LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=draft_cfg(models["target"]))
    want, _, _ = run_all(plain, prompts, GREEDY)
    got, stats, _ = run_all(spec, prompts, GREEDY)
    assert got == want
    assert [v[0] for v in got.values()] == hf_greedy_fn(models["target"], prompts, GREEDY.max_tokens)
    assert stats.num_draft_tokens > 50
    assert stats.num_accepted_tokens == stats.num_draft_tokens  # acceptance rate exactly 1.0
    assert_no_blocks_held(spec)


@pytest.mark.parametrize("kwargs", [
    {},  # six sequences batched
    {"max_num_batched_tokens": 7},  # chunked prefill; drafts cut to what is left of the budget
    {"block_size": 4, "num_kv_blocks": 14},  # preemption and recompute (the draft prefills again)
], ids=["batched", "chunked-prefill", "preemption"])
def test_a_different_draft_leaves_greedy_output_unchanged(models, kwargs):
    prompts = repetitive_prompts(6, VOCAB, seed=2)
    plain = LLMEngine.from_args(model=models["target"], device="cpu", **kwargs)
    spec = LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=draft_cfg(models["draft"]),
                               **kwargs)
    want, _, _ = run_all(plain, prompts, GREEDY)
    got, stats, _ = run_all(spec, prompts, GREEDY)
    assert got == want
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # both outcomes exercised
    if "num_kv_blocks" in kwargs:
        assert spec.scheduler.num_preemptions_total > 0
    assert_no_blocks_held(spec)


def test_prefix_cache_hits(models):
    prompts = repetitive_prompts(3, VOCAB, seed=3, length=40)
    plain = LLMEngine.from_args(model=models["target"], device="cpu", block_size=4)
    spec = LLMEngine.from_args(model=models["target"], device="cpu", block_size=4,
                               speculative_config=draft_cfg(models["draft"]))
    first, _, _ = run_all(spec, prompts, GREEDY)
    continued = [p + t[0][:20] for p, t in zip(prompts, first.values())]  # hits past the prompt
    want, _, _ = run_all(plain, continued, GREEDY)
    got, stats, _ = run_all(spec, continued, GREEDY)
    assert got == want
    assert stats.num_draft_tokens > 0
    assert_no_blocks_held(spec)


def test_early_exit_draft_from_the_targets_first_layer(models):
    prompts = repetitive_prompts(4, VOCAB, seed=5)
    plain = LLMEngine.from_args(model=models["target"], device="cpu")
    spec = LLMEngine.from_args(model=models["target"], device="cpu",
                               speculative_config=draft_cfg(None, draft_layers=1))
    assert spec.drafter.cfg.num_layers == 1 and len(spec.drafter.model.layers) == 1
    want, _, _ = run_all(plain, prompts, GREEDY)
    got, stats, _ = run_all(spec, prompts, GREEDY)
    assert got == want
    assert stats.num_accepted_tokens > 0


def held_blocks(engine: LLMEngine, rid: str) -> int:
    return len(engine.kv.block_ids(rid))


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_rejected_drafts_blocks_are_freed_at_once(models, method):
    # block size 1: every rejected draft took a block of its own. After each step the request holds exactly
    # what it holds without speculation at the same length: one block per computed token.
    cfg = draft_cfg(models["draft"]) if method == "draft" else \
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "disable_by_batch_size": 64}
    plain = LLMEngine.from_args(model=models["target"], device="cpu", block_size=1, enable_prefix_caching=False)
    spec = LLMEngine.from_args(model=models["target"], device="cpu", block_size=1, enable_prefix_caching=False,
                               speculative_config=cfg)
    prompt = repetitive_prompts(1, VOCAB, seed=6)[0]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    free_at_length = {}  # without speculation: free blocks after the step that brought the request to n tokens
    want, got = [], []
    plain.add_request("a", prompt, params)
    while plain.has_unfinished_requests():
        want += [t for d in plain.step().deltas for t in d.new_token_ids]
        req = plain.scheduler.requests.get("a")
        if req is not None:
            free_at_length[req.num_tokens] = plain.kv.pool.num_free_blocks
    spec.add_request("a", prompt, params)
    rejections = 0
    while spec.has_unfinished_requests():
        out = spec.step()
        got += [t for d in out.deltas for t in d.new_token_ids]
        req = spec.scheduler.requests.get("a")
        s = out.stats.spec_decode
        rejections += s.num_accepted_tokens < s.num_draft_tokens
        if req is None:
            continue
        assert spec.kv.pool.num_free_blocks == free_at_length[req.num_tokens]
        assert held_blocks(spec, "a") == cdiv(req.num_computed_tokens, 1)
        if method == "draft":  # the draft holds its computed tokens' blocks and no more
            assert spec.drafter.kv.pool.num_used_blocks == spec.drafter.num_computed("a") <= req.num_tokens - 1
        # the worker learns of the cut with the request's next step (CachedSeq.trim_blocks_to); until then
        # its copy may run past the scheduler's table, never differ within it
        table = spec.kv.block_ids("a")
        assert spec.runner.seqs["a"].block_ids[:len(table)] == table
    assert rejections > 0
    assert got == want  # and the blocks appended after each cut landed where the worker reads them
    assert spec.kv.pool.num_used_blocks == 0


def test_draft_blocks_come_back_on_abort(models):
    spec = LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=draft_cfg(models["draft"]))
    free_target, free_draft = spec.kv.pool.num_free_blocks, spec.drafter.kv.pool.num_free_blocks
    for i, prompt in enumerate(repetitive_prompts(3, VOCAB, seed=9)):
        spec.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    for _ in range(4):
        stats = spec.step().stats
    assert stats.spec_decode.num_draft_tokens > 0 and spec.drafter.kv.pool.num_free_blocks < free_draft
    for i in range(3):
        spec.abort_request(f"r{i}")
    spec.step()
    assert (spec.kv.pool.num_free_blocks, spec.drafter.kv.pool.num_free_blocks) == (free_target, free_draft)
    assert_no_blocks_held(spec)


def test_seeded_sampling_draws_the_same_tokens_with_and_without_the_draft(models):
    prompts = repetitive_prompts(4, VOCAB, seed=7)
    plain = LLMEngine.from_args(model=models["target"], device="cpu")
    spec = LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=draft_cfg(models["draft"]))
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, seed=100 + i, max_tokens=24, ignore_eos=True)
              for i, (t, k, p) in enumerate([(0.3, 0, 1.0), (0.6, 5, 1.0), (0.8, 0, 0.8), (1.0, 3, 0.9)])]
    want, _, _ = run_all(plain, prompts, params)
    got, stats, _ = run_all(spec, prompts, params)
    assert got == want
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens


# ---- configuration errors -------------------------------------------------------------------------------------
def test_a_draft_with_another_vocabulary_is_refused(models, tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-vocab"
    LlamaForCausalLM(LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    with pytest.raises(ValueError, match=r"speculative_model: the draft's vocabulary has 600 tokens, the target's 512"):
        LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=draft_cfg(str(other)))


@pytest.mark.parametrize("cfg, message", [
    ({"method": "draft"}, "speculative_model: the draft method needs a draft model"),
    ({"method": "ngram", "model": "x"}, r"speculative_config.model: only for method 'draft'"),
    ({"method": "draft", "draft_layers": 0}, r"speculative_config.draft_layers: must be an integer >= 1"),
    ({"method": "draft", "model": "/nonexistent/draft"}, "speculative_model: cannot load"),
])
def test_bad_draft_settings_name_the_parameter(models, cfg, message):
    with pytest.raises(ValueError, match=message):
        LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=cfg)


def test_draft_layers_must_leave_layers_out(models):
    with pytest.raises(ValueError, match=r"speculative_config.draft_layers: must be below the draft model's 2 layers"):
        LLMEngine.from_args(model=models["target"], device="cpu", speculative_config=draft_cfg(None, draft_layers=2))


def test_the_draft_method_is_refused_under_tensor_parallelism(models):
    with pytest.raises(ValueError, match=r"speculative_config: method 'draft' is not supported with "
                                         r"tensor_parallel_size > 1"):
        LLMEngine.from_args(model=models["target"], device="cpu", tensor_parallel_size=2,
                            speculative_config=draft_cfg(models["draft"]))


def test_cli_flags_build_the_draft_config():
    import argparse

    from engine.config import EngineArgs

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = EngineArgs.from_cli_args(parser.parse_args(
        ["--speculative-method", "draft", "--speculative-model", "some/dir", "--num-speculative-tokens", "5"]))
    assert (args.speculative_config.method, args.speculative_config.model,
            args.speculative_config.num_speculative_tokens) == ("draft", "some/dir", 5)
    args = EngineArgs.from_cli_args(parser.parse_args(["--speculative-method", "draft",
                                                       "--speculative-draft-layers", "4"]))
    assert (args.speculative_config.model, args.speculative_config.draft_layers) == (None, 4)
    with pytest.raises(ValueError, match="speculative_model: needs --speculative-method"):
        EngineArgs.from_cli_args(parser.parse_args(["--speculative-model", "x"]))


# ---- temperature > 0 --------------------------------------------------------------------------------------------
CHI2_CRIT_DF3_P001 = 16.27  # chi-square critical value, 3 degrees of freedom, p = 0.001
NUM_SAMPLES = 600


def chi2(counts, probs) -> float:
    import numpy as np

    expected = np.asarray(probs) * sum(counts)
    return float(((np.asarray(counts) - expected) ** 2 / expected).sum())


def test_the_first_token_sampled_against_a_draft_follows_the_target_distribution(tiny_model_dir):
    # Many seeded requests of one prompt, temperature 1, top-k 4, max_tokens 3: the first output token comes
    # from the prefill, the second is the first one sampled against a draft (the draft is the target itself,
    # so it proposes the target's argmax and is accepted often: the case where a wrong acceptance rule shows
    # most). Among the requests whose first token is the commonest one, the second token's counts must match
    # the target's distribution after that token (from HF transformers), and must not match what accepting a
    # draft with probability p(d) and otherwise drawing from p again (no residual) would give.
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = tiny_model_dir("llama")
    spec = LLMEngine.from_args(model=model, device="cpu", max_num_seqs=256,
                               speculative_config=draft_cfg(model, num_speculative_tokens=1,
                                                            disable_by_batch_size=256))
    prompt = [5, 17, 99, 250, 3, 42, 7, 310]
    params = [SamplingParams(temperature=1.0, top_k=4, seed=i, max_tokens=3, ignore_eos=True)
              for i in range(NUM_SAMPLES)]
    got, stats, _ = run_all(spec, [prompt] * NUM_SAMPLES, params)
    pairs = [tuple(v[0][:2]) for v in got.values()]
    first = max(set(p[0] for p in pairs), key=[p[0] for p in pairs].count)
    seconds = [p[1] for p in pairs if p[0] == first]
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + [first]])).logits[0, -1]
    top = torch.topk(logits, 4)
    probs = torch.softmax(top.values, dim=0).numpy()
    ids = top.indices.tolist()
    counts = [seconds.count(t) for t in ids]
    assert sum(counts) == len(seconds) > 150  # top-k 4: nothing outside the four
    assert stats.num_draft_tokens >= len(got) // 2 and 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert chi2(counts, probs) < CHI2_CRIT_DF3_P001
    d = ids.index(int(torch.argmax(logits)))  # the draft: the target's argmax
    wrong = probs * (1 - probs[d])
    wrong[d] += probs[d]
    assert chi2(counts, wrong) > CHI2_CRIT_DF3_P001
    assert np.isclose(probs.sum(), 1.0)


def test_the_kv_budget_pays_for_the_target_and_the_draft_blocks(models):
    budget_gb = 0.001
    plain = LLMEngine.from_args(model=models["target"], device="cpu", cpu_kv_cache_gb=budget_gb)
    spec = LLMEngine.from_args(model=models["target"], device="cpu", cpu_kv_cache_gb=budget_gb,
                               speculative_config=draft_cfg(None, draft_layers=1))
    target_block = plain.runner.block_bytes
    draft_block = spec.config.cache.block_size * spec.config.draft_model.kv_bytes_per_token
    assert draft_block * 2 == target_block  # one layer of two
    budget = int(budget_gb * 2**30)
    assert plain.kv.num_blocks == budget // target_block
    assert spec.kv.num_blocks == spec.drafter.kv.num_blocks == budget // (target_block + draft_block)
