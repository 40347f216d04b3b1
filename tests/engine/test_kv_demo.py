"""`kvserve demo kv-cache`: the cache-less baseline is the same model producing the same greedy tokens, and its
work grows with the context as the formulas say."""

from __future__ import annotations

import json

from engine.cli import main
from engine.config import EngineArgs
from engine.engine import LLMEngine
from engine.tools.kv_demo import model_flops, run_cached, run_recompute


def test_without_the_cache_the_runner_recomputes_and_still_matches_token_for_token(tiny_model_dir, prompts_fn):
    engine = LLMEngine.from_args(EngineArgs(model=tiny_model_dir("llama"), num_kv_blocks=64))
    prompts = prompts_fn(3, [7, 7, 7])
    cached_t, cached_tok, blocks = run_cached(engine, prompts, 12)
    recompute_t, recompute_tok = run_recompute(engine, prompts, 12)
    assert cached_tok == recompute_tok and all(len(t) == 12 for t in cached_tok)
    assert len(cached_t) == len(recompute_t) == 12 and all(t > 0 for t in cached_t + recompute_t)
    assert blocks == 3 * 2  # each sequence: 7 + 11 stored tokens = 2 blocks of 16
    assert engine.kv.pool.num_free_blocks == 64  # both runs gave every block back
    assert not any(rid.startswith("no-kv") for rid in engine.runner.seqs.states)  # and the baseline kept nothing


def test_the_recompute_work_grows_with_every_token(tiny_model_dir):
    engine = LLMEngine.from_args(EngineArgs(model=tiny_model_dir("llama"), num_kv_blocks=8))
    m = engine.cost_model
    cached, recompute = model_flops(m, prompt_len=4, output_len=3, num=2)
    dense, attn, logits = 2 * 74_048, 4 * 2 * 4 * 16, 2 * 512 * 64
    # with the cache: a 4-token prefill (10 pairs), then decodes at contexts 5 and 6
    assert cached == 2 * (4 * dense + 10 * attn + logits + (dense + 5 * attn + logits) + (dense + 6 * attn + logits))
    # without: full prefills of 4, 5 and 6 tokens (10, 15 and 21 causal pairs)
    assert recompute == 2 * ((4 + 5 + 6) * dense + (10 + 15 + 21) * attn + 3 * logits)


def test_the_demo_command_reports_speedups_memory_and_a_plot(tiny_model_dir, tmp_path, capsys):
    out, png = tmp_path / "demo.json", tmp_path / "kv.png"
    rc = main(["demo", "kv-cache", "--model", tiny_model_dir("llama"), "--prompt-len", "8", "--output-len", "20",
               "--lengths", "10,20,40", "--num-kv-blocks", "32", "--plot", str(png), "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["same_tokens"] is True and list(r["speedup"]) == ["10", "20"]  # 40 is past the output length
    assert len(r["cached_step_s"]) == len(r["recompute_step_s"]) == 20
    assert r["kv_bytes"] == r["kv_blocks"] * 16 * r["kv_bytes_per_token"] and r["kv_bytes_per_token"] == 512
    assert r["model_flops"]["recompute"] > r["model_flops"]["cached"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "same tokens with and without the cache: True" in capsys.readouterr().out
