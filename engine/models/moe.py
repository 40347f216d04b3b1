"""A sparse mixture-of-experts MLP: a router picks top-k experts per token, each a gated MLP, and their outputs are
summed with the routing weights.

Weights are stacked per layer the way vLLM and transformers 5 store them: `experts.gate_up_proj` [E, 2I, H] (each
expert's gate rows, then its up rows) and `experts.down_proj` [E, H, I]. Tensor parallelism of the experts later
splits the I dimension of both, as it does for a dense MLP.

Routing is the model's own: softmax over all experts in fp32, top-k, then the top-k weights renormalised to sum
to 1 (Mixtral always; Qwen3-MoE and OLMoE when `norm_topk_prob`), cast to the activation dtype.

Two paths compute the experts:
- CUDA: `kernels.fused_moe`, the Triton kernel (tokens sorted by expert, one grouped GEMM per projection).
- CPU: the (token, slot) pairs sorted by expert and one grouped GEMM per projection over the experts that
  received tokens (torch's `grouped_mm`); a decode step of one sequence computes its k experts and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import Linear, linear, silu_and_mul


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] in the logits' dtype, expert ids [T, k] int64) as transformers' routers compute them."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(router_logits.dtype), ids


def experts_cpu(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
    """sum_k weights[t, k] * down[e] @ silu_and_mul(gate_up[e] @ x[t]) with e = ids[t, k], computing only the
    experts some token chose, each on its own tokens: the (token, slot) pairs are sorted by expert, each
    projection is one grouped GEMM over the experts' runs (torch's `grouped_mm`, what transformers uses too;
    a loop of per-expert GEMMs on torch builds without it), and the rows are scattered back with index_add."""
    top_k = ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=gate_up.shape[0])
    tokens = order // top_k
    xs = x.index_select(0, tokens)
    if _GROUPED_MM is not None:
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        h = _GROUPED_MM(xs, gate_up.transpose(1, 2), offs=offs)
        h = _GROUPED_MM(silu_and_mul(h), down.transpose(1, 2), offs=offs)
    else:
        h = torch.empty((xs.shape[0], down.shape[1]), dtype=x.dtype, device=x.device)
        start = 0
        for expert, count in enumerate(counts.tolist()):
            if count:
                rows = slice(start, start + count)
                h[rows] = linear(silu_and_mul(linear(xs[rows], gate_up[expert])), down[expert])
                start += count
    h = h * weights.reshape(-1).index_select(0, order)[:, None]
    return torch.zeros_like(x).index_add_(0, tokens, h)


_GROUPED_MM = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class StackedExperts(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":
            import kernels

            return kernels.fused_moe(x, self.gate_up_proj, self.down_proj, weights, ids)
        return experts_cpu(x, self.gate_up_proj, self.down_proj, weights, ids)


class SparseMoE(nn.Module):
    """router (`gate`, [E, H]) + stacked experts. `forward(x [T, H]) -> [T, H]`."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int, renormalize: bool):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"model: num_experts_per_tok must be in [1, {num_experts}], got {top_k}")
        self.top_k, self.renormalize = top_k, renormalize
        self.gate = Linear(hidden_size, num_experts, bias=False)
        self.experts = StackedExperts(num_experts, hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)
