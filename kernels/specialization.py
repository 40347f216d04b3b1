"""How many compiled variants of each kernel a serving run asks for, found without a GPU.

    python -m kernels.specialization [--json PATH]

Triton compiles a kernel once per distinct launch key: the argument types and constexpr values, plus, for an
integer argument not marked `do_not_specialize`, whether it is 1 or a multiple of 16, and for a pointer not
marked `do_not_specialize_on_alignment`, whether it is 16-byte aligned. A key first seen inside a timed run
is a compile inside the timer (seconds). This builds the exact arguments the launchers pass (their `Launch`
data) for batch sizes 1..256, block-table widths 1..1024, split counts 2..64, and index tensors cut from one
packed buffer at batch-dependent offsets (as a single host-to-device copy per step lays them out), the int4
GEMM at decode batch sizes up to 64, computes
the key the JIT would use for sm_90 (`triton.runtime.jit.create_function_from_signature`, the binder `run`
calls; checked with triton 3.9), and counts distinct keys per set of constexpr values. One each is the goal:
then a warm-up that touches each constexpr set once compiles everything a run will need.
TRITON_INTERPRET must be unset (the interpreter replaces the JIT functions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator

import torch

from kernels.launch import Launch
from kernels.planning import decode_tiles, unified_tiles

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
BATCH_SIZES = (1, 2, 3, 16, 17, 64, 255, 256)
TABLE_WIDTHS = (1, 2, 16, 33, 1024)
SPLIT_COUNTS = (2, 3, 8, 13, 16, 64)


def launch_key(launch: Launch, arch: int = 90) -> str:
    """The compile-cache key `launch.kernel[grid](...)` would look up on an sm_`arch` device."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", arch, 32)))
    _, specialization, options = binder(*launch.args, **launch.kwargs)
    return repr(specialization) + repr(sorted(options.items()))


def _packed(values: list[int], offset: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """`values` at element `offset` of a larger buffer (as one staging copy per step would place them)."""
    buf = torch.zeros(offset + len(values) + 8, dtype=dtype)
    buf[offset:offset + len(values)] = torch.tensor(values, dtype=dtype)
    return buf[offset:offset + len(values)]


def _qkv(num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as views of one fused projection output (row stride (H + 2 KVH) * D), as the model has them."""
    q_size, kv_size = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    qkv = torch.empty((num_tokens, q_size + 2 * kv_size), dtype=DTYPE)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    return (q.view(num_tokens, NUM_HEADS, HEAD_DIM), k.view(num_tokens, NUM_KV_HEADS, HEAD_DIM),
            v.view(num_tokens, NUM_KV_HEADS, HEAD_DIM))


def attention_launches(cache: tuple[torch.Tensor, torch.Tensor]) -> Iterator[tuple[str, Launch]]:
    from kernels.decode_attention import decode_launches
    from kernels.kv_store import store_kv_launch
    from kernels.unified_attention import unified_attention_launch

    group = NUM_HEADS // NUM_KV_HEADS
    for batch in BATCH_SIZES:
        for width in TABLE_WIDTHS:
            offset = batch * 3 + width  # where the previous fields of a packed step buffer would end
            tables = _packed([0] * (batch * width), offset).view(batch, width)
            seq_lens = _packed([width * BLOCK_SIZE] * batch, offset + batch * width)
            q_lens = [1 + (i % 3) for i in range(batch)]  # a mixed batch for the varlen kernel
            cu_mixed = _packed([sum(q_lens[:i]) for i in range(batch + 1)], offset + 1)
            q, _, _ = _qkv(sum(q_lens))
            out = torch.empty(q.shape, dtype=DTYPE)
            yield "unified", unified_attention_launch(q, *cache, tables, cu_mixed, seq_lens, 0.1, out,
                                                      unified_tiles(HEAD_DIM, group, DTYPE))
            cu_decode = _packed(list(range(batch + 1)), offset + 3)
            q, k, v = _qkv(batch)
            out = torch.empty(q.shape, dtype=DTYPE)
            for num_splits in (1,) + SPLIT_COUNTS:
                for name, launch in zip(("decode", "reduce"),
                                        decode_launches(q, *cache, tables, cu_decode, seq_lens, 0.1, out,
                                                        decode_tiles(HEAD_DIM, group, DTYPE), num_splits)):
                    yield name, launch
            slots = _packed(list(range(batch)), offset, torch.int64)
            yield "store_kv", store_kv_launch(k, v, *cache, slots)


def elementwise_launches(hidden: int = 4096, intermediate: int = 14336) -> Iterator[tuple[str, Launch]]:
    from kernels.activation import silu_and_mul_launch
    from kernels.norm import rms_norm_launch
    from kernels.rotary import rope_launch

    weight = torch.ones(hidden, dtype=DTYPE)
    head_weight = torch.ones(HEAD_DIM, dtype=DTYPE)
    for tokens in BATCH_SIZES:
        x, delta = torch.empty((tokens, hidden), dtype=DTYPE), torch.empty((tokens, hidden), dtype=DTYPE)
        yield "rms_norm", rms_norm_launch(x, weight, 1e-5, torch.empty_like(x))
        yield "rms_norm", rms_norm_launch(x, weight, 1e-5, torch.empty_like(x), delta)
        q, k, _ = _qkv(tokens)
        yield "rms_norm", rms_norm_launch(q, head_weight, 1e-6, torch.empty(q.shape, dtype=DTYPE))  # Qwen3 q norm
        cos = torch.empty((tokens, 1, HEAD_DIM // 2), dtype=DTYPE)
        yield "rope", rope_launch(q, k, cos, cos)
        gate_up = torch.empty((tokens, 2 * intermediate), dtype=DTYPE)
        yield "silu_and_mul", silu_and_mul_launch(gate_up, torch.empty((tokens, intermediate), dtype=DTYPE))


def int4_launches(hidden: int = 4096, intermediate: int = 14336) -> Iterator[tuple[str, Launch]]:
    """The int4 GEMM for every decode batch size up to Int4Linear's 64-row threshold, on an o_proj-like
    projection (K split into partial sums) and gate_up (unsplit), group size 128."""
    from kernels.int4_matmul import int4_matmul_launch, int4_num_splits
    from kernels.planning import DEFAULT_NUM_SMS

    for n in (hidden, 2 * intermediate):
        qweight = torch.empty((n, hidden // 2), dtype=torch.uint8)
        sz = torch.empty((n, hidden // 128, 2), dtype=DTYPE)
        for rows in [b for b in BATCH_SIZES if b <= 64] + [31, 33, 48]:
            x, out = torch.empty((rows, hidden), dtype=DTYPE), torch.empty((rows, n), dtype=DTYPE)
            splits = int4_num_splits(rows, n, hidden, DTYPE, DEFAULT_NUM_SMS)
            partials = torch.empty((splits, rows, n), dtype=torch.float32) if splits > 1 else None
            yield "int4_matmul", int4_matmul_launch(x, qweight, sz, 128, out, partials, splits)


def count_variants(launches: Iterator[tuple[str, Launch]]) -> dict[str, dict]:
    """Per kernel: launches seen, constexpr sets seen, and the largest number of keys any one set got."""
    keys: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    counts: dict[str, int] = defaultdict(int)
    for name, launch in launches:
        constexprs = repr(sorted(launch.kwargs.items()))
        keys[name][constexprs].add(launch_key(launch))
        counts[name] += 1
    return {name: {"launches": counts[name], "constexpr_sets": len(sets),
                   "max_keys_per_constexpr_set": max(len(k) for k in sets.values())}
            for name, sets in keys.items()}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(prog="python -m kernels.specialization", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", default=None)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernels.specialization: unset TRITON_INTERPRET (the interpreter has no compile keys)")

    num_blocks = 4
    cache = tuple(torch.empty((num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), dtype=DTYPE) for _ in range(2))

    def every_launch():
        yield from attention_launches(cache)
        yield from elementwise_launches()
        yield from int4_launches()

    result = count_variants(every_launch())
    print(f"{'kernel':<14} {'launches':>8} {'constexpr sets':>14} {'keys per set (max)':>18}")
    for name, r in result.items():
        print(f"{name:<14} {r['launches']:>8} {r['constexpr_sets']:>14} {r['max_keys_per_constexpr_set']:>18}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(0 if all(r["max_keys_per_constexpr_set"] == 1 for r in main().values()) else 1)
