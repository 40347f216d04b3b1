"""Write new tokens' keys and values into their slots of the paged KV cache.

Grid: one program per token. Token t goes to slot = page * block_size + offset, i.e. row `offset` of page `page`
in key_cache / value_cache [num_blocks, block_size, KVH, D]; a slot < 0 (a padded or skipped token) writes
nothing. Each program copies the token's [KVH, D] key and value tiles; offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import Launch
from kernels.planning import next_power_of_2


# The token count is the grid, not an argument; slot_mapping may be a slice of a packed buffer at any offset.
# The strides are fixed per model (and kept specialized: divisible by 16 lets the copies use wide accesses).
@triton.jit(do_not_specialize_on_alignment=["slot_mapping_ptr"])
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    page = slot // PAGE
    offset = slot % PAGE
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    mask = (offs_h < NUM_KV_HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]

    k = tl.load(key_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    tl.store(k_cache_ptr + page * stride_kcb + offset * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :],
             k, mask=mask)
    v = tl.load(value_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(v_cache_ptr + page * stride_vcb + offset * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :],
             v, mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Launch the store kernel. Arguments are already validated."""
    launch = store_kv_launch(key, value, key_cache, value_cache, slot_mapping)
    if launch is not None:
        launch.run()


def store_kv_launch(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> Launch | None:
    """The store launch, or None for zero tokens."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return None
    constants = launch_constants(num_kv_heads, head_dim, key_cache.shape[1])
    args = (key, value, key_cache, value_cache, slot_mapping,
            key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2))
    return Launch(_store_kv_kernel, (num_tokens,), args, dict(constants, num_warps=store_num_warps(constants)))


def launch_constants(num_kv_heads: int, head_dim: int, block_size: int) -> dict:
    """The store kernel's constexpr arguments (shared with kernels.compile_report)."""
    return dict(NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HEADS_PAD=next_power_of_2(num_kv_heads),
                HEAD_DIM_PAD=next_power_of_2(head_dim), PAGE=block_size)


def store_num_warps(constants: dict) -> int:
    return 4 if constants["HEADS_PAD"] * constants["HEAD_DIM_PAD"] >= 1024 else 2
