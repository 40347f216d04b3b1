"""Tensor-parallel layers and which slice of each checkpoint tensor a rank loads.

Megatron layout on top of the model's fused projections:

    qkv_proj, gate_up_proj   column-parallel: each rank holds the output rows of its heads / MLP columns;
                             no communication (a rank's attention reads only its own heads)
    o_proj, down_proj        row-parallel: each rank multiplies its input columns; one all-reduce sums the
                             partial products (the bias, replicated, is added once, after the sum)
    embed_tokens             vocabulary-parallel: a rank looks up the ids in its vocabulary chunk, zeros the
                             rest; one all-reduce (exactly one rank contributes each row, so the sum is exact)
    lm_head                  vocabulary-parallel: each rank computes the logits of its chunk; rank 0 gathers
                             them, drops the padding and samples (ranks > 0 return no logits)

The vocabulary is split into equal chunks of ceil(V / world) rows; the last chunk is zero-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed.comm import TPComm
from ..distributed.partition import TPShard, plan_for_model
from .layers import Linear, linear


@dataclass(frozen=True, eq=False)
class TPContext:
    """What a sharded model needs: its rank's slice of the model, and the group to talk over."""

    shard: TPShard
    comm: TPComm
    head_dim: int
    kv_heads_all_ranks: int  # KV heads summed over the ranks (replicas counted): the cache's total size

    @classmethod
    def for_rank(cls, model_config, comm: TPComm) -> "TPContext":
        shards = plan_for_model(model_config, comm.world)
        return cls(shards[comm.rank], comm, model_config.head_dim, sum(s.num_kv_heads for s in shards))

    def gather_logits(self, local: torch.Tensor) -> torch.Tensor | None:
        """[n, V] logits on rank 0 from every rank's [n, V / world] chunk; None on the other ranks."""
        parts = self.comm.gather(local.contiguous())
        if parts is None:
            return None
        return torch.cat(parts, dim=-1)[:, :self.shard.vocab_size]


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local @ W_local^T) + b, with W split by input columns and b replicated."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPContext):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.comm.all_reduce(linear(x, self.weight).contiguous())
        return y if self.bias is None else y.add_(self.bias)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, rows: int, dim: int, tp: TPContext):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, dim))
        self.start = tp.shard.vocab[0]
        self.tp = tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.comm.all_reduce(out.masked_fill_(outside.unsqueeze(-1), 0.0))


def row_linear(in_features: int, out_features: int, bias: bool, tp: TPContext | None) -> nn.Module:
    return Linear(in_features, out_features, bias=bias) if tp is None else RowParallelLinear(in_features, out_features, bias, tp)


def embedding(vocab_size: int, dim: int, tp: TPContext | None) -> nn.Module:
    return nn.Embedding(vocab_size, dim) if tp is None else VocabParallelEmbedding(tp.shard.vocab_rows, dim, tp)


# ---- loading ------------------------------------------------------------------------------------------------
VOCAB_PARAMS = ("embed_tokens.weight", "lm_head.weight")


def shard_source(tp: TPContext, name: str, fused_index: int | None) -> tuple[int, int, int] | None:
    """(dim, start, end) of the checkpoint tensor that rank `tp.shard.rank` loads into parameter `name`
    (`fused_index`: q/k/v = 0/1/2, gate/up = 0/1 inside a fused parameter); None = the whole tensor
    (norms and row-parallel biases are replicated)."""
    s, d = tp.shard, tp.head_dim
    if name.endswith(VOCAB_PARAMS):
        return (0, *s.real_vocab)
    if ".qkv_proj." in name:
        heads = s.q_heads if fused_index == 0 else s.kv_heads
        return (0, heads[0] * d, heads[1] * d)
    if ".gate_up_proj." in name:
        return (0, *s.intermediate)
    if name.endswith("o_proj.weight"):
        return (1, s.q_heads[0] * d, s.q_heads[1] * d)
    if name.endswith("down_proj.weight"):
        return (1, *s.intermediate)
    return None


def read_shard(safetensors_file, key: str, source: tuple[int, int, int] | None) -> torch.Tensor:
    """Read only this rank's slice of a checkpoint tensor (safetensors reads the slice, not the whole)."""
    if source is None:
        return safetensors_file.get_tensor(key)
    dim, start, end = source
    view = safetensors_file.get_slice(key)
    return view[start:end] if dim == 0 else view[:, start:end]
