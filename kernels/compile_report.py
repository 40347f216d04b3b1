"""Compile the kernels for Hopper without a GPU and report what the compiler made of them.

    python -m kernels.compile_report [--quick] [--json PATH]

The interpreter checks what the kernels compute, not whether they compile for a GPU or how. This compiles
each configuration the launchers use for sm_90 (ahead of time, no device needed) and reports its shared
memory, whether the K/V loads are pipelined through shared memory (async copies), whether tl.dot became
Hopper wgmma, and ptxas's register and spill counts. Pointer and stride arguments get the divisibility-by-16
specialization the JIT applies at launch for such values (the engine's strides are multiples of 16 elements),
except those a kernel marks do_not_specialize / do_not_specialize_on_alignment (the JIT skips them too).
The element-wise kernels (RMSNorm with and without the residual add, RoPE, SiLU-and-mul) are compiled at
Llama-3.1-8B's widths; for them only registers and spills matter. The fused MoE kernel is compiled for both
projections with decode and prefill tiles, and the varlen kernel once more with soft-capping (Gemma 2). The
8-bit KV cache (int8 and fp8 e4m3 codes with fp32 scales) is compiled for the store, decode and varlen kernels.
The weight-only int4 GEMM is compiled for a decode step (one row, K split into fp32 partial sums) and for its
largest batch (64 rows, unsplit) at Llama-3.1-8B's K = 4096.
Uses triton's compiler internals (ASTSource, GPUTarget), present from triton 3.2 on. TRITON_INTERPRET must be
unset: the interpreter replaces @triton.jit functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import torch

from kernels.planning import decode_tiles, unified_tiles

HOPPER_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90
TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
CODE_TYPES = {torch.int8: "i8", torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5"}
KV_CACHE_POINTERS = ("k_cache_ptr", "v_cache_ptr")
SCALE_POINTERS = ("k_scale_ptr", "v_scale_ptr")
INDEX_POINTERS = {"block_tables_ptr": "*i32", "cu_seqlens_q_ptr": "*i32", "seq_lens_ptr": "*i32",
                  "slot_mapping_ptr": "*i64", "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
                  "sorted_token_ids_ptr": "*i32", "expert_ids_ptr": "*i32", "num_tokens_post_padded_ptr": "*i32",
                  "topk_weights_ptr": "*fp32", "qweight_ptr": "*u8"}
# Integer arguments the JIT specialises as divisible by 16 at launch for real models (the MoE GEMMs' N and K:
# hidden and intermediate sizes), like pointers and strides
DIVISIBLE_INTS = ("N", "K")
# An 8-bit cache's scale strides are KV-head counts (8 for Llama-3.1-8B, 3 for SmolLM2): not multiples of 16
SCALE_STRIDES = ("stride_sb", "stride_ss")


@dataclass
class KernelReport:
    kernel: str
    config: str
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None
    async_loads: bool  # loads go global -> shared asynchronously (software pipelining)
    wgmma: bool  # tl.dot lowered to Hopper warp-group MMA

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= HOPPER_SHARED_LIMIT


FLOAT_ARGS = ("qk_scale", "softcap_log2", "eps")


def _compile(fn, constants: dict, dtype: torch.dtype, num_warps: int, num_stages: int, arch: int,
             options: dict | None = None, kv_dtype: torch.dtype | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        if name in constants:
            signature[name] = "constexpr"
        elif name in KV_CACHE_POINTERS and kv_dtype is not None:
            signature[name] = "*" + CODE_TYPES[kv_dtype]  # an 8-bit cache's codes
        elif name in SCALE_POINTERS:
            # the scales of an 8-bit cache; without one the launchers pass the caches (never read)
            signature[name] = "*fp32" if kv_dtype is not None else "*" + TRITON_TYPES[dtype]
        elif name.endswith("_ptr"):
            signature[name] = INDEX_POINTERS.get(name, "*" + TRITON_TYPES[dtype])
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
        specialized = not (param.do_not_specialize or param.do_not_specialize_on_alignment)
        runtime = name not in constants
        if runtime and specialized and name not in SCALE_STRIDES and (
                name.endswith("_ptr") or name.startswith("stride") or name in DIVISIBLE_INTS):
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn, signature, constants, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(options or {}, num_warps=num_warps, num_stages=num_stages))


def _ptxas_usage(ptx: str, arch: int) -> tuple[int | None, int | None]:
    """(registers, spill bytes) from `ptxas -v`, or (None, None) when this triton's ptxas cannot be found."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            ptxas = get_ptxas(arch).path
        except TypeError:  # older triton: no arch argument
            ptxas = get_ptxas().path
    except Exception:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        result = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}a", src, "-o", os.path.join(tmp, "k.cubin")],
                                capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", result.stderr)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", result.stderr)
    if regs is None:
        return None, None
    return int(regs.group(1)), sum(int(s) for s in spills)


def report(fn, config: str, constants: dict, dtype: torch.dtype, num_warps: int, num_stages: int,
           arch: int, options: dict | None = None, kv_dtype: torch.dtype | None = None) -> KernelReport:
    compiled = _compile(fn, constants, dtype, num_warps, num_stages, arch, options, kv_dtype)
    ttgir = compiled.asm["ttgir"]
    registers, spills = _ptxas_usage(compiled.asm["ptx"], arch)
    return KernelReport(fn.__name__.strip("_"), config, compiled.metadata.shared, registers, spills,
                        "async_copy_global_to_local" in ttgir, "warp_group_dot" in ttgir)


def configurations(quick: bool) -> list[tuple]:
    """(kernel, config label, constants, dtype, num_warps, num_stages[, options[, kv_dtype]]) as the launchers
    use them."""
    from kernels import decode_attention, kv_store, unified_attention

    shapes = [(torch.bfloat16, 128, 4)] if quick else [
        (torch.bfloat16, 64, 4), (torch.bfloat16, 128, 4), (torch.bfloat16, 256, 4), (torch.float16, 80, 3),
        (torch.float32, 128, 4)]
    num_heads, block_size = 32, 16
    out = []
    for dtype, head_dim, group in shapes:
        label = f"{TRITON_TYPES[dtype]} D={head_dim} group={group} block_size={block_size}"
        tiles = unified_tiles(head_dim, group, dtype)
        out.append((unified_attention._unified_attention_kernel, f"{label} tiles={tiles.block_m}x{tiles.block_n}",
                    unified_attention.launch_constants(head_dim, group, block_size, dtype, tiles), dtype,
                    tiles.num_warps, tiles.num_stages))
        tiles = decode_tiles(head_dim, group, dtype)
        for num_splits in (1, 8):
            out.append((decode_attention._decode_kernel, f"{label} rows={tiles.block_m} keys={tiles.block_n} "
                        f"splits={num_splits}",
                        decode_attention.launch_constants(num_heads, head_dim, group, block_size, dtype, tiles,
                                                          num_splits), dtype, tiles.num_warps, tiles.num_stages))
    out.append((decode_attention._reduce_splits_kernel, "bf16 D=128 splits=8",
                decode_attention.reduce_constants(num_heads, 128, 8), torch.bfloat16, 4, 1))
    constants = kv_store.launch_constants(8, 128, block_size)
    out.append((kv_store._store_kv_kernel, "bf16 KVH=8 D=128", constants, torch.bfloat16,
                kv_store.store_num_warps(constants), 1))
    return (out + kv_8bit_configurations(quick) + moe_configurations(quick) + int4_configurations(quick)
            + elementwise_configurations())


def kv_8bit_configurations(quick: bool) -> list[tuple]:
    """The 8-bit KV cache: the store kernel quantizing, the decode (with and without splits) and varlen kernels
    dequantizing, bf16 activations at D=128 group 4 (Llama-3.1-8B), int8 and fp8 e4m3 codes (and e5m2 in the
    full report; the kernels only differ in the code type and the store's rounding constants)."""
    from kernels import decode_attention, kv_store, unified_attention

    dtype, head_dim, group, num_heads, block_size = torch.bfloat16, 128, 4, 32, 16
    formats = [torch.int8, torch.float8_e4m3fn] + ([] if quick else [torch.float8_e5m2])
    out = []
    for kv_dtype in formats:
        kv = f"kv={CODE_TYPES[kv_dtype]}"
        constants = kv_store.launch_constants(8, head_dim, block_size, kv_dtype)
        out.append((kv_store._store_kv_kernel, f"bf16 KVH=8 D={head_dim} {kv}", constants, dtype,
                    kv_store.store_num_warps(constants), 1, None, kv_dtype))
        tiles = unified_tiles(head_dim, group, dtype)
        out.append((unified_attention._unified_attention_kernel, f"bf16 D={head_dim} group={group} {kv} "
                    f"tiles={tiles.block_m}x{tiles.block_n}",
                    unified_attention.launch_constants(head_dim, group, block_size, dtype, tiles, kv_quant=True),
                    dtype, tiles.num_warps, tiles.num_stages, None, kv_dtype))
        tiles = decode_tiles(head_dim, group, dtype)
        for num_splits in (1, 8):
            out.append((decode_attention._decode_kernel, f"bf16 D={head_dim} group={group} {kv} "
                        f"rows={tiles.block_m} keys={tiles.block_n} splits={num_splits}",
                        decode_attention.launch_constants(num_heads, head_dim, group, block_size, dtype, tiles,
                                                          num_splits, kv_quant=True),
                        dtype, tiles.num_warps, tiles.num_stages, None, kv_dtype))
    return out


def moe_configurations(quick: bool) -> list[tuple]:
    """The fused MoE kernel (both projections: gate_up without, down with the routing weights) with decode
    tiles (a few pairs per expert: Qwen3-30B-A3B's top 8 of 128) and, in the full report, prefill tiles
    (Mixtral's top 2 of 8 on a 2048-token chunk), plus Gemma 2's soft-capped varlen attention (D=256)."""
    from kernels import moe_kernel, unified_attention

    out = []
    cases = [("decode top8/128", 8, 128, 8)] if quick else [("decode top8/128", 8, 128, 8),
                                                             ("prefill top2/8", 2 * 2048, 8, 2)]
    for label, pairs, experts, top_k in cases:
        tiles = moe_kernel.moe_tiles(pairs, experts, torch.bfloat16)
        for proj, k, mul in (("gate_up", top_k, False), ("down", 1, True)):
            out.append((moe_kernel._fused_moe_kernel, f"bf16 {label} {proj} tiles={tiles.block_m}x{tiles.block_n}x"
                        f"{tiles.block_k}", moe_kernel.launch_constants(tiles, k, mul, torch.bfloat16),
                        torch.bfloat16, tiles.num_warps, tiles.num_stages))
    if not quick:
        tiles = unified_tiles(256, 2, torch.bfloat16)
        out.append((unified_attention._unified_attention_kernel, "bf16 D=256 group=2 softcap (Gemma 2)",
                    unified_attention.launch_constants(256, 2, 16, torch.bfloat16, tiles, softcap=True),
                    torch.bfloat16, tiles.num_warps, tiles.num_stages))
    return out


def int4_configurations(quick: bool) -> list[tuple]:
    """The weight-only int4 GEMM at K = 4096 in bf16, group size 128: one row with split-K partial sums (decode)
    and 64 rows stored directly (its largest batch); the full report adds group size 32 (several groups per
    K tile, as GGUF's Q4 blocks have), fp16 and fp32 (an fp32 model on CUDA)."""
    from kernels import int4_matmul

    cases = [(torch.bfloat16, 128)] + ([] if quick else [(torch.bfloat16, 32), (torch.float16, 128),
                                                          (torch.float32, 32)])
    out = []
    for dtype, group in cases:
        for rows, partials in ((1, True), (64, False)):
            tiles = int4_matmul.int4_tiles(rows, dtype)
            block_k = int4_matmul.int4_block_k(4096, tiles)
            out.append((int4_matmul._int4_matmul_kernel, f"{TRITON_TYPES[dtype]} K=4096 g={group} rows={rows} "
                        f"tiles={tiles.block_m}x{tiles.block_n}x{block_k}{' split-K' if partials else ''}",
                        int4_matmul.launch_constants(group, block_k, tiles, partials, dtype), dtype,
                        tiles.num_warps, tiles.num_stages))
    return out


def elementwise_configurations() -> list[tuple]:
    """The fused element-wise kernels at Llama-3.1-8B's widths (hidden 4096, 32/8 heads of 128, MLP 14336),
    taken from their launch helpers so that warps and options are the launched ones."""
    from kernels.activation import silu_and_mul_launch
    from kernels.norm import rms_norm_launch
    from kernels.rotary import rope_launch

    dtype, meta = torch.bfloat16, dict(dtype=torch.bfloat16, device="meta")
    x = torch.empty((8, 4096), **meta)
    q, k = torch.empty((8, 32, 128), **meta), torch.empty((8, 8, 128), **meta)
    launches = [("rms_norm N=4096", rms_norm_launch(x, torch.empty(4096, **meta), 1e-5, x)),
                ("add_rms_norm N=4096", rms_norm_launch(x, torch.empty(4096, **meta), 1e-5, x, x)),
                ("rms_norm per head D=128", rms_norm_launch(q, torch.empty(128, **meta), 1e-6, q)),
                ("rope H=32 KVH=8 D=128", rope_launch(q, k, torch.empty((8, 64), **meta), torch.empty((8, 64), **meta))),
                ("silu_and_mul I=14336", silu_and_mul_launch(torch.empty((8, 2 * 14336), **meta),
                                                             torch.empty((8, 14336), **meta)))]
    out = []
    for label, launch in launches:
        kwargs = dict(launch.kwargs)
        num_warps, num_stages = kwargs.pop("num_warps"), kwargs.pop("num_stages", 1)
        options = {name: kwargs.pop(name) for name in ("enable_fp_fusion",) if name in kwargs}
        out.append((launch.kernel, f"bf16 {label}", kwargs, dtype, num_warps, num_stages, options))
    return out


def main(argv: list[str] | None = None) -> list[KernelReport]:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the bf16 D=128 configurations")
    parser.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90)")
    parser.add_argument("--json", metavar="PATH", default=None)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernels.compile_report: unset TRITON_INTERPRET (the interpreter cannot compile)")
    reports = []
    print(f"{'kernel':<24} {'shared KiB':>10} {'regs':>5} {'spill B':>7} {'async':>5} {'wgmma':>5}  config")
    for fn, config, constants, dtype, num_warps, num_stages, *options in configurations(args.quick):
        r = report(fn, config, constants, dtype, num_warps, num_stages, args.arch, *options)
        reports.append(r)
        print(f"{r.kernel:<24} {r.shared_bytes / 1024:10.1f} {r.registers or '-':>5} "
              f"{'-' if r.spill_bytes is None else r.spill_bytes:>7} {str(r.async_loads):>5} {str(r.wgmma):>5}  "
              f"{r.config} warps={num_warps} stages={num_stages}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"fits": r.fits} for r in reports], f, indent=2)
    return reports


if __name__ == "__main__":
    main()
