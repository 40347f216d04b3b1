"""Write new tokens' keys and values into their slots of the paged KV cache (quantizing them for an 8-bit one).

Grid: one program per token. Token t goes to slot = page * block_size + offset, i.e. row `offset` of page `page`
in key_cache / value_cache [num_blocks, block_size, KVH, D]; a slot < 0 (a padded or skipped token) writes
nothing. Each program copies the token's [KVH, D] key and value tiles; offsets are int64.

An 8-bit cache (int8, fp8 e4m3 / e5m2: QUANT) gets codes instead, and one fp32 scale per KV head written to
the same (page, offset) of k_scales / v_scales [num_blocks, block_size, KVH] (kernels.kv_quant).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.kv_quant import code_constants, quantize_heads
from kernels.launch import Launch
from kernels.planning import next_power_of_2


@triton.jit
def _store_tile(x_ptr, cache_ptr, scale_ptr, token, stride_t, stride_h, cache_off, scale_off, stride_ch,
                offs_h, offs_d, mask, h_ok, QUANT: tl.constexpr, QMAX: tl.constexpr, FP8_MANT: tl.constexpr,
                FP8_EMIN: tl.constexpr):
    x = tl.load(x_ptr + token * stride_t + offs_h[:, None] * stride_h + offs_d[None, :], mask=mask, other=0.0)
    if QUANT:
        x, scale = quantize_heads(x.to(tl.float32), QMAX, FP8_MANT, FP8_EMIN)
        tl.store(scale_ptr + scale_off + offs_h, scale, mask=h_ok)
    tl.store(cache_ptr + cache_off + offs_h[:, None] * stride_ch + offs_d[None, :],
             x.to(cache_ptr.dtype.element_ty), mask=mask)


# The token count is the grid, not an argument; slot_mapping may be a slice of a packed buffer at any offset.
# The strides are fixed per model (and kept specialized: divisible by 16 lets the copies use wide accesses).
@triton.jit(do_not_specialize_on_alignment=["slot_mapping_ptr"])
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_sb, stride_ss,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE: tl.constexpr, QUANT: tl.constexpr = False, QMAX: tl.constexpr = 1.0, FP8_MANT: tl.constexpr = 0,
    FP8_EMIN: tl.constexpr = 0,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    page = slot // PAGE
    offset = slot % PAGE
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    h_ok = offs_h < NUM_KV_HEADS
    mask = h_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    scale_off = page * stride_sb + offset * stride_ss  # unused unless QUANT
    _store_tile(key_ptr, k_cache_ptr, k_scale_ptr, token, stride_kt, stride_kh, page * stride_kcb + offset * stride_kcs,
                scale_off, stride_kch, offs_h, offs_d, mask, h_ok, QUANT, QMAX, FP8_MANT, FP8_EMIN)
    _store_tile(value_ptr, v_cache_ptr, v_scale_ptr, token, stride_vt, stride_vh,
                page * stride_vcb + offset * stride_vcs, scale_off, stride_vch, offs_h, offs_d, mask, h_ok, QUANT,
                QMAX, FP8_MANT, FP8_EMIN)


def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor, k_scales: torch.Tensor | None = None,
             v_scales: torch.Tensor | None = None) -> None:
    """Launch the store kernel. Arguments are already validated."""
    launch = store_kv_launch(key, value, key_cache, value_cache, slot_mapping, k_scales, v_scales)
    if launch is not None:
        launch.run()


def store_kv_launch(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, k_scales: torch.Tensor | None = None,
                    v_scales: torch.Tensor | None = None) -> Launch | None:
    """The store launch, or None for zero tokens."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return None
    quant = k_scales is not None
    constants = launch_constants(num_kv_heads, head_dim, key_cache.shape[1], key_cache.dtype if quant else None)
    # without an 8-bit cache the scale pointers are never read: pass the caches to keep the argument types fixed
    scale_args = (k_scales, v_scales, k_scales.stride(0), k_scales.stride(1)) if quant else (key_cache, value_cache, 0, 0)
    args = (key, value, key_cache, value_cache, slot_mapping, *scale_args[:2],
            key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2), *scale_args[2:])
    return Launch(_store_kv_kernel, (num_tokens,), args, dict(constants, num_warps=store_num_warps(constants)))


def launch_constants(num_kv_heads: int, head_dim: int, block_size: int, code_dtype: torch.dtype | None = None) -> dict:
    """The store kernel's constexpr arguments (shared with kernels.compile_report); `code_dtype` the 8-bit
    cache's dtype, None for a cache in the activations' dtype."""
    return dict(NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HEADS_PAD=next_power_of_2(num_kv_heads),
                HEAD_DIM_PAD=next_power_of_2(head_dim), PAGE=block_size, **code_constants(code_dtype))


def store_num_warps(constants: dict) -> int:
    return 4 if constants["HEADS_PAD"] * constants["HEAD_DIM_PAD"] >= 1024 else 2
