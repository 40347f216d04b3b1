"""Pure-torch references for the fused MoE kernel: the oracle its tests trust.

Written for obviousness: every (token, slot) pair on its own, in fp32. Never needs triton.
"""

from __future__ import annotations

import torch


def fused_moe_ref(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_j topk_weights[t, j] * down[e] @ (silu(g) * u), [g; u] = gate_up[e] @ x[t], e = topk_ids[t, j]."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    inter = gate_up.shape[1] // 2
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            h = gate_up[e].float() @ x[t].float()
            h = torch.nn.functional.silu(h[:inter]) * h[inter:]
            out[t] += float(topk_weights[t, j]) * (down[e].float() @ h)
    return out.to(x.dtype)


def moe_align_ref(topk_ids: torch.Tensor, block_m: int, num_experts: int) -> tuple[list[int], list[int], int]:
    """The sorted pair list (sentinel T*k), each tile's expert and the used length, by plain Python."""
    flat = topk_ids.reshape(-1).tolist()
    sentinel = len(flat)
    sorted_ids: list[int] = []
    expert_ids: list[int] = []
    for e in range(num_experts):
        pairs = [p for p, x in enumerate(flat) if x == e]
        if not pairs:
            continue
        padded = -(-len(pairs) // block_m) * block_m
        sorted_ids += pairs + [sentinel] * (padded - len(pairs))
        expert_ids += [e] * (padded // block_m)
    return sorted_ids, expert_ids, len(sorted_ids)
