"""The benchmark's CPU-side parts: its formulas, its command line, its table, and a clear exit without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from kernels import bench


def test_copy_bandwidth_counts_read_and_write():
    assert bench.copy_bandwidth(num_bytes=10**9, seconds=0.5) == 4e9


def test_decode_bytes_are_kv_plus_query_and_output():
    # batch 2, context 100, 4 query / 2 KV heads, D 8, 2-byte elements
    kv = 2 * 2 * 100 * 2 * 8 * 2
    q_and_out = 2 * 2 * 4 * 8 * 2
    assert bench.decode_bytes(2, 100, 4, 2, 8, 2) == kv + q_and_out == 13056


def test_causal_flops_count_visible_pairs():
    # 3 tokens see 1 + 2 + 3 = 6 keys; each pair is a D-long dot for QK^T and for PV: 2 * 2 * D FLOPs per head
    assert bench.causal_attention_flops(3, num_heads=2, head_dim=8) == 4 * 2 * 8 * 6
    assert bench.causal_attention_flops(4096, 32, 128) == 4 * 32 * 128 * 4096 * 4097 // 2


def test_decode_memory_counts_gathered_and_repeated_kv_for_torch():
    ours, torch_extra = bench.decode_memory_needed(1, 10, 8, 2, 4, 2)
    assert ours == 2 * 10 * 2 * 4 * 2
    assert torch_extra == ours * (1 + 4)


def test_command_line():
    assert (bench.parse_args([]).json, bench.parse_args([]).quick) == (None, False)
    args = bench.parse_args(["--json", "out.json", "--quick"])
    assert (args.json, args.quick) == ("out.json", True)


def test_sweeps_cover_the_stated_shapes():
    assert bench.FULL.batches == (1, 8, 32, 128) and bench.FULL.contexts == (512, 2048, 8192, 32768)
    assert bench.FULL.prefill_tokens == (1024, 2048, 4096, 8192, 16384)
    assert bench.FULL.elementwise_tokens == (16, 256, 2048, 8192)
    assert set(bench.QUICK.batches) < set(bench.FULL.batches)
    assert set(bench.QUICK.elementwise_tokens) < set(bench.FULL.elementwise_tokens)


def test_table_lists_every_measured_and_skipped_shape():
    results = dict(device="X", torch="t", triton="tr", copy_GBps=4000.0, prefill=[
        dict(tokens=1024, ours_ms=0.1, ours_TFLOPs=300.0, sdpa_ms=0.2, sdpa_TFLOPs=150.0, ratio_to_sdpa=2.0, ok=True),
    ], decode=[
        dict(batch=1, context=512, num_splits=2, ours_ms=0.01, ours_GBps=1000.0, fraction_of_copy=0.25,
             torch_ms=0.05, speedup=5.0, ok=True),
        dict(batch=128, context=32768, skipped="needs 200 GiB"),
    ])
    table = bench.format_tables(results)
    assert "25.0%" in table and "5.00" in table and "skipped: needs 200 GiB" in table and "300.0" in table
    results["elementwise"] = [dict(op="add_rms_norm", tokens=2048, ours_ms=0.02, ours_GBps=3355.0,
                                   fraction_of_copy=0.79, torch_ms=0.1, speedup=5.0, ok=True)]
    assert "add_rms_norm    2048" in bench.format_tables(results) and "79.0%" in bench.format_tables(results)


def test_json_is_replaced_whole_after_each_row(tmp_path):
    path = tmp_path / "kernels.json"
    bench.write_json(str(path), {"decode": [1]})
    bench.write_json(str(path), {"decode": [1, 2]})
    assert json.loads(path.read_text()) == {"decode": [1, 2]} and not (tmp_path / "kernels.json.tmp").exists()
    bench.write_json(None, {"decode": []})  # no --json: nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_exits_with_a_clear_message_without_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--quick"])


def test_int4_rows_count_packed_codes_scales_and_activations_and_appear_in_the_table():
    from kernels import bench_int4

    assert bench_int4.int4_bytes(1, 4096, 4096, 128) == 4096 * 2048 + 4 * 4096 * 32 + 2 * 4096 + 2 * 4096
    names, batches = bench_int4.QUICK
    assert set(names) <= set(bench_int4.FULL[0]) and set(batches) <= set(bench_int4.FULL[1]) and 1 in batches
    results = dict(device="X", torch="t", triton="tr", copy_GBps=4000.0, prefill=[], decode=[], int4=[
        dict(proj="gate_up", rows=1, ours_ms=0.02, ours_GBps=3000.0, fraction_of_copy=0.75, bf16_ms=0.07,
             speedup_vs_bf16=3.5, ok=True)])
    table = bench.format_tables(results)
    assert "gate_up      1" in table and "75.0%" in table and "3.50" in table


def test_int4_bench_dequantizes_as_the_reference_does():
    from kernels import bench_int4
    from kernels.reference import unpack_int4_ref

    qweight, sz, w = bench_int4._weights(8, 256, "cpu")
    codes = unpack_int4_ref(qweight).float().view(8, 2, 128)
    want = ((codes - 8) * sz[..., 0:1].float() + sz[..., 1:2].float()).view(8, 256)
    torch.testing.assert_close(bench_int4.unpack_dequantize(qweight, sz).float(), want, atol=1e-2, rtol=1e-2)
    assert torch.equal(bench_int4.unpack_dequantize(qweight, sz), w)
