"""Benchmark of the paged-attention kernels against the device's copy bandwidth and torch, on a CUDA GPU.

    python -m kernels.bench [--json PATH] [--quick]

Measured in one run:
  copy     device-to-device copy of a large tensor: (bytes read + bytes written) / time, the bandwidth ceiling
  decode   batch x context, 32 query / 8 KV heads, D=128, bf16, block_size 16, shuffled pages:
           our time, achieved bandwidth = (KV bytes read + query + output bytes) / time and its ratio to the
           copy bandwidth; torch on the same data (pages gathered to contiguous K/V, then SDPA with GQA,
           the gather inside the timing) and our speedup over it
  prefill  one causal sequence of T tokens, same heads, bf16: our TFLOP/s (formula printed) vs SDPA on
           contiguous tensors
  element-wise  the fused RMSNorm (+ residual add), RoPE and SiLU-and-mul kernels at Llama-3.1-8B widths vs
           the torch ops they replace (kernels.bench_elementwise)
  int4     the weight-only int4 GEMM at Llama-3.1-8B's projection shapes and decode batch sizes vs the bf16
           GEMM over the same (dequantized) weights (kernels.bench_int4)
Times are medians of triton.testing.do_bench after warm-up (it clears L2 between runs). Shapes that do not
fit in free device memory are skipped. Every measured output is also checked against the torch result.
With --json the file is rewritten after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import asdict, dataclass

import torch

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
FLOP_FORMULA = "causal FLOPs = 4 * H * D * T * (T + 1) / 2  (QK^T and PV, 2 FLOPs per MAC, visible pairs only)"
BYTES_FORMULA = "decode bytes = 2 * B * context * KVH * D * elem (K and V) + 2 * B * H * D * elem (query, output)"
MAX_ABS_ERROR = 3e-2  # bf16 output vs torch


@dataclass(frozen=True)
class Sweep:
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    prefill_tokens: tuple[int, ...]
    elementwise_tokens: tuple[int, ...]


FULL = Sweep((1, 8, 32, 128), (512, 2048, 8192, 32768), (1024, 2048, 4096, 8192, 16384), (16, 256, 2048, 8192))
QUICK = Sweep((1, 32), (2048, 8192), (2048, 8192), (16, 2048))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a smaller sweep (a few shapes) for a smoke run")
    return parser.parse_args(argv)


# ---- formulas (plain Python, unit-tested on CPU) ---------------------------------------------------------

def copy_bandwidth(num_bytes: int, seconds: float) -> float:
    """Bytes per second of a copy of num_bytes: every byte is read once and written once."""
    return 2 * num_bytes / seconds


def decode_bytes(batch: int, context: int, num_heads: int, num_kv_heads: int, head_dim: int, elem_size: int) -> int:
    kv = 2 * batch * context * num_kv_heads * head_dim * elem_size
    return kv + 2 * batch * num_heads * head_dim * elem_size


def causal_attention_flops(num_tokens: int, num_heads: int, head_dim: int) -> int:
    return 4 * num_heads * head_dim * (num_tokens * (num_tokens + 1) // 2)


def decode_memory_needed(batch: int, context: int, num_heads: int, num_kv_heads: int, head_dim: int,
                         elem_size: int) -> tuple[int, int]:
    """(bytes for our run, extra bytes for the torch run): the paged caches, then gathered K/V and GQA copies."""
    cache = 2 * batch * context * num_kv_heads * head_dim * elem_size
    return cache, cache * (1 + num_heads // num_kv_heads)


# ---- measurements (CUDA only) -----------------------------------------------------------------------------

def _median_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def measure_copy_bandwidth(num_bytes: int = 2 << 30) -> float:
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    return copy_bandwidth(num_bytes, ms / 1e3)


@functools.cache
def _sdpa_has_gqa() -> bool:
    q, kv = torch.zeros(1, 4, 1, 16, device="cuda"), torch.zeros(1, 2, 1, 16, device="cuda")
    try:
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


def _gqa_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """SDPA over [B, H, L, D] queries and [B, KVH, L, D] keys/values; repeats KV heads if GQA is unsupported."""
    F = torch.nn.functional
    if _sdpa_has_gqa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                          is_causal=is_causal)


def bench_decode(batch_size: int, context: int, copy_bw: float) -> dict:
    import kernels
    from kernels.batch import make_paged_batch

    ours_need, torch_need = decode_memory_needed(batch_size, context, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, 2)
    free, _ = torch.cuda.mem_get_info()
    row = dict(batch=batch_size, context=context)
    if ours_need * 1.1 > free:
        return {**row, "skipped": f"needs {ours_need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"}
    b = make_paged_batch([1] * batch_size, [context] * batch_size, num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS,
                         head_dim=HEAD_DIM, block_size=BLOCK_SIZE, dtype=DTYPE, device="cuda", seed=context)
    out = torch.empty_like(b.query)
    num_splits = kernels.decode_num_splits(batch_size, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, context, DTYPE, "cuda")
    ours_ms = _median_ms(lambda: kernels.paged_attention(*b.args(), out=out, max_query_len=1, max_seq_len=context))
    moved = decode_bytes(batch_size, context, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, 2)
    row.update(ours_ms=ours_ms, num_splits=num_splits, bytes=moved, ours_GBps=moved / ours_ms / 1e6,
               fraction_of_copy=moved / (ours_ms / 1e3) / copy_bw)

    if ours_need + torch_need * 1.1 > free:
        row["torch_skipped"] = "gathered K/V do not fit"
    else:
        pages = b.block_tables[:, :context // BLOCK_SIZE].long()
        q = b.query.view(batch_size, NUM_HEADS, 1, HEAD_DIM)

        def torch_decode() -> torch.Tensor:
            k = b.key_cache[pages].view(batch_size, context, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
            v = b.value_cache[pages].view(batch_size, context, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
            return _gqa_sdpa(q, k, v, is_causal=False)

        try:
            expected = torch_decode().view_as(out)
            row["max_abs_error"] = float((out.float() - expected.float()).abs().max())
            row["ok"] = row["max_abs_error"] <= MAX_ABS_ERROR
            del expected
            row["torch_ms"] = _median_ms(torch_decode)
            row["speedup"] = row["torch_ms"] / ours_ms
        except torch.cuda.OutOfMemoryError:
            row["torch_skipped"] = "out of memory"
    del b, out
    torch.cuda.empty_cache()
    return row


def bench_prefill(num_tokens: int) -> dict:
    import kernels
    from kernels.batch import make_paged_batch

    b = make_paged_batch([num_tokens], [num_tokens], num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS,
                         head_dim=HEAD_DIM, block_size=BLOCK_SIZE, dtype=DTYPE, device="cuda", seed=num_tokens)
    out = torch.empty_like(b.query)
    ours_ms = _median_ms(lambda: kernels.paged_attention(*b.args(), out=out, max_query_len=num_tokens,
                                                         max_seq_len=num_tokens))
    # SDPA gets contiguous [1, H, T, D] tensors, KV heads already repeated: its best case.
    pages = b.block_tables[0, :-(-num_tokens // BLOCK_SIZE)].long()
    k = b.key_cache[pages].reshape(-1, NUM_KV_HEADS, HEAD_DIM)[:num_tokens]
    v = b.value_cache[pages].reshape(-1, NUM_KV_HEADS, HEAD_DIM)[:num_tokens]
    group = NUM_HEADS // NUM_KV_HEADS
    q4 = b.query.transpose(0, 1)[None].contiguous()
    k4 = k.repeat_interleave(group, 1).transpose(0, 1)[None].contiguous()
    v4 = v.repeat_interleave(group, 1).transpose(0, 1)[None].contiguous()
    F = torch.nn.functional
    sdpa_ms = _median_ms(lambda: F.scaled_dot_product_attention(q4, k4, v4, is_causal=True))
    expected = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True)[0].transpose(0, 1)
    flops = causal_attention_flops(num_tokens, NUM_HEADS, HEAD_DIM)
    row = dict(tokens=num_tokens, flops=flops, ours_ms=ours_ms, ours_TFLOPs=flops / ours_ms / 1e9,
               sdpa_ms=sdpa_ms, sdpa_TFLOPs=flops / sdpa_ms / 1e9, ratio_to_sdpa=sdpa_ms / ours_ms,
               max_abs_error=float((out.float() - expected.float()).abs().max()))
    row["ok"] = row["max_abs_error"] <= MAX_ABS_ERROR
    del b, out, q4, k4, v4
    torch.cuda.empty_cache()
    return row


def format_tables(results: dict) -> str:
    lines = [f"device: {results['device']}  torch {results['torch']}  triton {results['triton']}",
             f"copy bandwidth: {results['copy_GBps']:.0f} GB/s (read + write)", BYTES_FORMULA,
             f"{'batch':>5} {'context':>7} {'splits':>6} {'ours ms':>8} {'GB/s':>7} {'%copy':>6} "
             f"{'torch ms':>9} {'speedup':>7} {'ok':>3}"]
    for r in results["decode"]:
        if "skipped" in r:
            lines.append(f"{r['batch']:>5} {r['context']:>7}  skipped: {r['skipped']}")
            continue
        torch_ms = f"{r['torch_ms']:9.3f} {r['speedup']:7.2f}" if "torch_ms" in r else f"{'-':>9} {'-':>7}"
        lines.append(f"{r['batch']:>5} {r['context']:>7} {r['num_splits']:>6} {r['ours_ms']:8.3f} "
                     f"{r['ours_GBps']:7.0f} {100 * r['fraction_of_copy']:5.1f}% {torch_ms} {str(r.get('ok', '-')):>3}")
    lines += [FLOP_FORMULA, f"{'tokens':>6} {'ours ms':>8} {'TFLOP/s':>8} {'sdpa ms':>8} {'TFLOP/s':>8} "
                            f"{'ours/sdpa':>9} {'ok':>3}"]
    for r in results["prefill"]:
        lines.append(f"{r['tokens']:>6} {r['ours_ms']:8.3f} {r['ours_TFLOPs']:8.1f} {r['sdpa_ms']:8.3f} "
                     f"{r['sdpa_TFLOPs']:8.1f} {r['ratio_to_sdpa']:9.2f} {str(r['ok']):>3}")
    if results.get("elementwise"):
        from kernels.bench_elementwise import format_rows

        lines += format_rows(results["elementwise"])
    if results.get("int4"):
        from kernels.bench_int4 import format_rows as format_int4_rows

        lines += format_int4_rows(results["int4"])
    return "\n".join(lines)


def write_json(path: str | None, results: dict) -> None:
    """Replace `path` with the results so far (write then rename: a reader never sees half a file)."""
    if path is None:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernels.bench needs a CUDA GPU (none is visible here); the CPU can only run the tests, "
                         "under TRITON_INTERPRET=1")
    import triton

    from kernels.bench_elementwise import bench_elementwise
    from kernels.bench_int4 import bench_int4

    sweep = QUICK if args.quick else FULL
    copy_bw = measure_copy_bandwidth()
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                   sweep=asdict(sweep), copy_GBps=copy_bw / 1e9, flop_formula=FLOP_FORMULA,
                   bytes_formula=BYTES_FORMULA, decode=[], prefill=[], elementwise=[], int4=[])
    write_json(args.json, results)
    for batch_size in sweep.batches:
        for context in sweep.contexts:
            results["decode"].append(bench_decode(batch_size, context, copy_bw))
            print(f"decode {results['decode'][-1]}", file=sys.stderr, flush=True)
            write_json(args.json, results)
    for num_tokens in sweep.prefill_tokens:
        results["prefill"].append(bench_prefill(num_tokens))
        print(f"prefill {results['prefill'][-1]}", file=sys.stderr, flush=True)
        write_json(args.json, results)
    for num_tokens in sweep.elementwise_tokens:
        results["elementwise"] += bench_elementwise(num_tokens, copy_bw, _median_ms)
        print(f"elementwise {results['elementwise'][-4:]}", file=sys.stderr, flush=True)
        write_json(args.json, results)
    results["int4"] = bench_int4(copy_bw, _median_ms, args.quick)
    print(f"int4 {results['int4']}", file=sys.stderr, flush=True)
    write_json(args.json, results)
    results["complete"] = True
    write_json(args.json, results)
    print(format_tables(results), flush=True)
    return results


if __name__ == "__main__":
    main()
