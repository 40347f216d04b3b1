"""Random paged-attention batches, shared by the tests and the benchmark.

A batch is laid out the way the engine lays it out, with the traps a kernel could fall into made visible:
pages are handed out in a random order (non-contiguous, unsorted block ids), every cache slot that no
sequence owns (the tail of a partial last page, a spare block) holds NaN, and block-table entries past a
sequence's last page point at a NaN-filled block (or at a wild value of the caller's choice). A kernel that
reads anything it should not therefore produces NaN (or faults) instead of a plausible number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedBatch:
    query: torch.Tensor  # [T, H, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, KVH, D]
    value_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32
    cu_seqlens_q: torch.Tensor  # [S + 1] int32
    seq_lens: torch.Tensor  # [S] int32
    scale: float
    q_lens: list[int]
    context_lens: list[int]  # seq_lens as Python ints
    sliding_window: int | None = None

    def args(self) -> tuple:
        """Positional arguments of paged_attention / paged_attention_ref."""
        return (self.query, self.key_cache, self.value_cache, self.block_tables, self.cu_seqlens_q,
                self.seq_lens, self.scale)

    @property
    def max_query_len(self) -> int:
        return max(self.q_lens, default=0)

    @property
    def max_seq_len(self) -> int:
        return max(self.context_lens, default=0)


def make_paged_batch(q_lens: list[int], seq_lens: list[int], *, num_heads: int, num_kv_heads: int, head_dim: int,
                     block_size: int = 16, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     seed: int = 0, table_padding: int | None = None, extra_table_cols: int = 2,
                     sliding_window: int | None = None) -> PagedBatch:
    """A batch whose sequence s has q_lens[s] new tokens at the end of a seq_lens[s]-token context.

    table_padding: value of block-table entries past each sequence's last page; None = a NaN-filled block.
    sliding_window: pages wholly before the first query's window (older than seq_len - q_len - W + 1) are
    released, as the engine releases them: their table entries point at the NaN-filled block.
    """
    if len(q_lens) != len(seq_lens) or any(not 0 <= q <= s for q, s in zip(q_lens, seq_lens)):
        raise ValueError(f"q_lens: need 0 <= q_len <= seq_len per sequence, got {q_lens} vs {seq_lens}")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    pages_per_seq = [-(-s // block_size) for s in seq_lens]
    # One NaN block for the table padding and one spare block that no table mentions.
    num_blocks = sum(pages_per_seq) + 2
    order = torch.randperm(num_blocks, generator=gen, device=device).to(torch.int32)
    poison_block = order[-1]
    padding = poison_block if table_padding is None else torch.tensor(table_padding, dtype=torch.int32)
    max_blocks = max(pages_per_seq, default=0) + extra_table_cols
    block_tables = torch.empty((len(seq_lens), max_blocks), dtype=torch.int32, device=device)
    block_tables[:] = padding.to(device)

    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    value_cache = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    owned = torch.zeros((num_blocks, block_size), dtype=torch.bool, device=device)
    first = 0
    for s, (n_pages, seq_len) in enumerate(zip(pages_per_seq, seq_lens)):
        pages = order[first:first + n_pages]
        first += n_pages
        block_tables[s, :n_pages] = pages
        slots = torch.arange(seq_len, device=device)
        owned[pages.long()[slots // block_size], slots % block_size] = True
        if sliding_window is not None:
            released = max(0, seq_len - q_lens[s] - sliding_window + 1) // block_size
            owned[pages[:released].long()] = False
            block_tables[s, :released] = poison_block
    key_cache[~owned] = float("nan")
    value_cache[~owned] = float("nan")

    num_tokens = sum(q_lens)
    query = torch.randn((num_tokens, num_heads, head_dim), generator=gen, device=device, dtype=dtype)
    cu = [0]
    for q in q_lens:
        cu.append(cu[-1] + q)
    return PagedBatch(
        query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        scale=head_dim ** -0.5, q_lens=list(q_lens), context_lens=list(seq_lens), sliding_window=sliding_window,
    )
