"""Penalties (presence / frequency / repetition) at draft positions.

The device's penalty counts (`engine.sample.tables.PenaltyCounts`) hold each sequence's output so far. The
row that samples the position after draft d_i must be penalized as if d_1 .. d_i were already output, and
after verification only the tokens kept may be counted. Host side: which (penalized row, draft token) pairs
to add to a row's gathered counts, and each row's next draft and its sequence's first row; device side: which
rows' tokens were kept (the leading rows whose token equals the next draft, plus one).
"""

from __future__ import annotations

import numpy as np
import torch


def draft_penalty_arrays(row_counts: np.ndarray, drafts: tuple[tuple[int, ...], ...],
                         pen_rows: np.ndarray) -> list[np.ndarray]:
    """[next_draft (R'), row_first (R'), extra_idx (E), extra_tok (E)]: each row's next draft (-1 on a
    sequence's last row), the index of its sequence's first row, and for each penalized row (index into
    `pen_rows`) the drafts before its position."""
    next_draft, row_first, seq_of_row, offset = [], [], [], []
    row = 0
    for s, (n, d) in enumerate(zip(row_counts.tolist(), drafts)):
        next_draft.extend(d)
        next_draft.append(-1)
        row_first.extend([row] * n)
        seq_of_row.extend([s] * n)
        offset.extend(range(n))
        row += n
    extra_idx, extra_tok = [], []
    for j, r in enumerate(pen_rows.tolist()):
        prior = drafts[seq_of_row[r]][:offset[r]]
        extra_idx.extend([j] * len(prior))
        extra_tok.extend(prior)
    as64 = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return [as64(next_draft), as64(row_first), as64(extra_idx), as64(extra_tok)]


def kept_rows(tokens: torch.Tensor, next_draft: torch.Tensor, row_first: torch.Tensor) -> torch.Tensor:
    """[R'] bool: the rows whose token the verification keeps (every row up to and including the first whose
    token differs from the next draft, within each sequence)."""
    miss = (tokens != next_draft).to(torch.int64)
    before = miss.cumsum(0) - miss  # misses strictly before each row, over the whole batch
    return before == before.index_select(0, row_first)


def with_prior_drafts(gather, extra_idx: torch.Tensor, extra_tok: torch.Tensor):
    """A penalty gatherer that also counts each penalized row's prior drafts as output tokens."""
    def gathered(slots: torch.Tensor):
        counts, prompt_mask = gather(slots)  # index_select: a copy, the tables are untouched
        if extra_idx.numel():
            counts.index_put_((extra_idx, extra_tok), torch.ones((), dtype=counts.dtype, device=counts.device),
                              accumulate=True)
        return counts, prompt_mask

    return gathered
