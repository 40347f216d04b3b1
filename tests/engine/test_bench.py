"""`kvserve bench`: a seeded workload, the same for every system, and results in the documented JSON keys."""

from __future__ import annotations

import json

from engine.tools.bench import make_workload, parse_len
from engine.cli import main


def test_workload_is_seeded_and_within_ranges():
    a = make_workload(16, "5:9", "3", seed=4, vocab_size=100)
    assert a == make_workload(16, "5:9", "3", seed=4, vocab_size=100)
    assert a != make_workload(16, "5:9", "3", seed=5, vocab_size=100)
    assert all(5 <= len(p) <= 9 and all(0 <= t < 100 for t in p) for p in a.prompts)
    assert a.output_lens == [3] * 16
    assert parse_len("32:256") == (32, 256) and parse_len("7") == (7, 7)


def test_bench_vs_hf_writes_the_documented_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", tiny_model_dir("llama"), "--num-prompts", "5", "--input-len", "4:12",
               "--output-len", "2:6", "--vs-hf", "--hf-batch-size", "2", "--rounds", "2", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    wl = make_workload(5, "4:12", "2:6", seed=0, vocab_size=512)
    assert r["output_tokens"] == sum(wl.output_lens) == r["workload"]["output_tokens"]
    assert r["engine_output_tok_s"] > 0 and r["hf_static_output_tok_s"] > 0 and r["hf_cb_output_tok_s"] > 0
    assert len(r["engine_over_hf_static_rounds"]) == 2
    assert "engine / HF static" in capsys.readouterr().out
    # the full-size warm-up: all 5 requests at once (fewer than max_num_seqs), whole prompts (they are shorter
    # than max_num_batched_tokens / 5), then decode steps
    assert r["warmup"]["requests"] == 5 and r["warmup"]["prompt_tokens"] == sum(map(len, wl.prompts))
    assert r["complete"] is True
    assert r["max_model_len"] == 256  # the workload needs 12 + 6 tokens, not the model's whole window


def test_bench_context_window_is_the_workloads_rounded_up_within_the_models():
    from engine.tools.bench import workload_max_model_len

    wl = make_workload(4, "512", "256", seed=0, vocab_size=100)
    assert workload_max_model_len(wl, model_limit=131072) == 768
    assert workload_max_model_len(make_workload(4, "500:513", "3", 0, 100), model_limit=131072) == 768
    assert workload_max_model_len(wl, model_limit=600) == 600


def test_bench_json_keeps_the_engine_figures_when_hf_fails(tiny_model_dir, tmp_path, monkeypatch):
    import pytest

    from engine.tools import bench

    def broken_hf(*args, **kwargs):
        raise RuntimeError("HF could not load")

    monkeypatch.setattr(bench, "load_hf_model", broken_hf)
    out = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="HF could not load"):
        main(["bench", "--model", tiny_model_dir("llama"), "--num-prompts", "3", "--input-len", "4",
              "--output-len", "2", "--vs-hf", "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["engine_output_tok_s"] > 0 and r["output_tokens"] == 6
    assert r["hf_static_output_tok_s"] is None and "complete" not in r


def test_bench_reports_prefill_and_decode_steps_and_plots_a_roofline_sweep(tiny_model_dir, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "roofline.png"
    rc = main(["bench", "--model", tiny_model_dir("llama"), "--num-prompts", "4", "--input-len", "8",
               "--output-len", "4", "--plot", str(png), "--sweep-batch-sizes", "1,3", "--sweep-input-len", "6",
               "--sweep-output-len", "3", "--peak-flops", "1", "--peak-bandwidth", "0.1", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    steps = r["engine"]["steps"]
    # 4 prompts of 8 tokens fit one step's budget: one prefill step (sampling each prompt's first token), then
    # three decode steps for tokens 2..4
    assert (steps["prefill"]["steps"], steps["decode"]["steps"], steps["mixed"]["steps"]) == (1, 3, 0)
    assert steps["all"]["flops"] == steps["prefill"]["flops"] + steps["decode"]["flops"]
    assert 0 < steps["all"]["mfu"] and steps["peak"]["flops"] == 1e12
    assert r["engine"]["ttft_s"]["count"] == 4 and r["engine"]["tpot_s"]["count"] == 4
    assert {b: (s["prefill"]["steps"], s["decode"]["steps"]) for b, s in r["roofline_sweep"].items()} == \
        {"1": (1, 2), "3": (1, 2)}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "prefill" in text and "decode" in text and "TTFT mean" in text and "TPOT mean" in text
