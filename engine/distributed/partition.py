"""Which slice of the model each tensor-parallel rank holds (Megatron layout), as plain numbers.

Attention splits by whole GQA groups: a rank holds some KV heads and exactly the query heads that read
them, so attention needs no communication. The MLP splits its intermediate columns; the vocabulary (the
embedding rows and the LM head) splits into equal padded chunks.

    9 query heads, 3 KV heads (SmolLM2-135M), world 3:  rank r holds KV head r and query heads 3r..3r+2
    same model, world 2:     rank 0: KV head 0, q 0-2;  rank 1: KV heads 1-2, q 3-8  (uneven: whole groups)
    6 query heads, 1 KV head, world 3:  every rank holds KV head 0 (replicated), query heads 2r, 2r+1
    4 query heads, 2 KV heads, world 4: ranks 0, 1 hold KV head 0, ranks 2, 3 hold KV head 1; one q head each

When the KV heads (or the MLP columns) do not divide by the world size, ranks get as-even-as-possible whole
shares, the earlier ranks the smaller ones (rank 0 also schedules and samples); the slowest rank sets the
pace. With fewer KV heads than ranks each KV head is replicated on world / kv_heads ranks, which must divide.
Shapes that cannot be split, and families the sharded modules do not cover yet (MoE, Gemma, Phi-3:
`TP_ARCHITECTURES`), raise a ValueError naming `tensor_parallel_size`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TPShard:
    """Rank `rank` of `world`: half-open ranges of global indices."""

    rank: int
    world: int
    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    intermediate: tuple[int, int]
    vocab: tuple[int, int]  # rows of the padded vocabulary; rows >= vocab_size are zero padding
    vocab_size: int  # the real vocabulary

    @property
    def num_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def intermediate_size(self) -> int:
        return self.intermediate[1] - self.intermediate[0]

    @property
    def vocab_rows(self) -> int:
        """Rows of this rank's embedding and LM-head shard, padding included (the same on every rank)."""
        return self.vocab[1] - self.vocab[0]

    @property
    def real_vocab(self) -> tuple[int, int]:
        """The real (unpadded) vocabulary rows of this shard; empty when the shard is all padding."""
        return min(self.vocab[0], self.vocab_size), min(self.vocab[1], self.vocab_size)


def _even(n: int, world: int, rank: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def plan_shards(num_heads: int, num_kv_heads: int, intermediate_size: int, vocab_size: int,
                world: int) -> list[TPShard]:
    """Every rank's shard; raises ValueError naming tensor_parallel_size when the shapes cannot be split."""
    if world < 1:
        raise ValueError(f"tensor_parallel_size: must be >= 1, got {world}")
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"model: {num_heads} query heads do not group evenly over {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    if world > num_kv_heads:
        if world % num_kv_heads:
            raise ValueError(f"tensor_parallel_size: {world} ranks cannot share the model's {num_kv_heads} KV heads "
                             f"(with more ranks than KV heads the size must be a multiple of {num_kv_heads}; "
                             f"a size <= {num_kv_heads} or a multiple of it works)")
        replicas = world // num_kv_heads
        if replicas > group:
            raise ValueError(f"tensor_parallel_size: {world} ranks is more than the model's {num_heads} query heads")
    if intermediate_size < world:
        raise ValueError(f"tensor_parallel_size: {world} ranks is more than the MLP's {intermediate_size} columns")
    per_rank_vocab = -(-vocab_size // world)
    shards = []
    for r in range(world):
        if world <= num_kv_heads:
            kv = _even(num_kv_heads, world, r)
            q = (kv[0] * group, kv[1] * group)
        else:
            replicas = world // num_kv_heads
            head, sub = divmod(r, replicas)
            kv = (head, head + 1)
            lo, hi = _even(group, replicas, sub)
            q = (head * group + lo, head * group + hi)
        shards.append(TPShard(rank=r, world=world, q_heads=q, kv_heads=kv,
                              intermediate=_even(intermediate_size, world, r),
                              vocab=(r * per_rank_vocab, (r + 1) * per_rank_vocab), vocab_size=vocab_size))
    return shards


# Families whose modules and loader know the Megatron layout (engine.models.parallel). The others are refused
# by name: MoE (the experts' I dimension would split like the MLP's, and the layer would all-reduce after its
# down projection; not built yet), Gemma 2/3 and Phi-3 (their own attention/MLP modules, and Phi-3's checkpoint
# stores q/k/v and gate/up already fused, which a rank would read as several slices).
TP_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


def plan_for_model(model_config, world: int) -> list[TPShard]:
    """`plan_shards` for an `engine.config.ModelConfig`."""
    if world > 1 and model_config.architecture not in TP_ARCHITECTURES:
        raise ValueError(f"tensor_parallel_size: {world} ranks is not supported for {model_config.architecture!r} "
                         f"models yet (tensor parallelism covers {', '.join(TP_ARCHITECTURES)}); use "
                         "tensor_parallel_size 1")
    hf = model_config.hf_config
    return plan_shards(model_config.num_heads, model_config.num_kv_heads, hf.intermediate_size,
                       model_config.vocab_size, world)
