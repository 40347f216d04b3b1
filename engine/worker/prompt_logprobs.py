"""Prompt logprobs in the model runner: which token rows of a step need them, and their values, packed.

A sequence whose `SamplingOptions.prompt_logprobs` is set gets the log-probability of each of its prompt
tokens (and the top-k alternatives, and the token's rank) from the same forward pass its prefill runs:

    prompt:    p0   p1   p2   p3   p4   p5          chunk 1 computes positions 0..2, chunk 2 positions 3..5
    chunk 1:  [p0   p1   p2]                       rows at positions 0, 1, 2 predict p1, p2, p3
    chunk 2:                 [p3   p4   p5]         rows at 3, 4 predict p4, p5; the row at 5 is the sampling row

so a chunk over positions [start, end) has rows for positions start .. min(end, num_prompt - 1) - 1, and its
entries begin at position start + 1 (`PromptLogprobs.first_position`). Only those rows get full-vocabulary
logits (in slices of `SLICE_ROWS`, so a long prompt never holds [prompt, vocab] floats at once); every
other sequence in the step pays nothing. The values leave the device in the step's one readback, after the
sampled tokens (`pack` / `unpack`), as int32 words: per row the chosen logprob, its rank, then k top ids and
k top logprobs (floats as their bits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..outputs import TokenLogprob
from ..step import PromptLogprobs, ScheduledSeq
from .seq_states import SeqState

SLICE_ROWS = 256  # rows of full-vocabulary logits computed at once


@dataclass(frozen=True, slots=True)
class PromptRowPlan:
    """The step's prompt-logprob rows: `rows` index the flattened step's tokens, `targets` are the prompt
    tokens those rows predict; `spans` say whose they are: (request id, first position, count, k)."""

    rows: np.ndarray  # [P] int64
    targets: np.ndarray  # [P] int64
    spans: tuple[tuple[str, int, int, int], ...]
    k: int  # the most alternatives any span asks for

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def packed_size(self) -> int:
        return self.num_rows * (2 + 2 * self.k)


def plan(seqs: Sequence[ScheduledSeq], states: Sequence[SeqState], query_lens: np.ndarray) -> PromptRowPlan | None:
    """The rows of this step that need prompt logprobs (None when no sequence asks)."""
    rows: list[np.ndarray] = []
    targets: list[int] = []
    spans = []
    offset = 0
    for s, st, qlen in zip(seqs, states, query_lens.tolist()):
        k = st.sampling.prompt_logprobs
        end = min(s.start + qlen, st.num_prompt_tokens - 1)
        if k is not None and end > s.start:
            count = end - s.start
            rows.append(np.arange(offset, offset + count, dtype=np.int64))
            targets.extend(st.token_ids[s.start + 1:end + 1])
            spans.append((s.request_id, s.start + 1, count, k))
        offset += qlen
    if not spans:
        return None
    return PromptRowPlan(np.concatenate(rows), np.array(targets, dtype=np.int64), tuple(spans),
                         max(sp[3] for sp in spans))


@torch.no_grad()
def compute(hidden: torch.Tensor, targets: torch.Tensor, k: int,
            compute_logits: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor | None:
    """The packed logprobs of the prompt rows `hidden` [P, H] (None on a tensor-parallel rank > 0, which only
    contributes its share of the logits)."""
    parts = []
    for i in range(0, hidden.shape[0], SLICE_ROWS):
        logits = compute_logits(hidden[i:i + SLICE_ROWS])
        if logits is None:
            continue
        lp = torch.log_softmax(logits.float(), dim=-1)
        chosen = lp.gather(1, targets[i:i + SLICE_ROWS].unsqueeze(1))
        rank = (lp > chosen).sum(dim=1, keepdim=True) + 1
        top_vals, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        parts.append(torch.cat([chosen.view(torch.int32), rank.to(torch.int32), top_ids.to(torch.int32),
                                top_vals.contiguous().view(torch.int32)], dim=1).reshape(-1))
    return torch.cat(parts) if parts else None


def unpack(packed: np.ndarray, p: PromptRowPlan) -> tuple[PromptLogprobs, ...]:
    """The host side of `compute`: one `PromptLogprobs` per span."""
    words = packed[:p.packed_size].reshape(p.num_rows, 2 + 2 * p.k)
    chosen = words[:, 0].view(np.float32).tolist()
    ranks = words[:, 1].tolist()
    top_ids = words[:, 2:2 + p.k].tolist()
    top_vals = np.ascontiguousarray(words[:, 2 + p.k:]).view(np.float32).tolist()
    targets = p.targets.tolist()
    out = []
    row = 0
    for rid, first, count, k in p.spans:
        entries = tuple(TokenLogprob(targets[r], chosen[r], dict(zip(top_ids[r][:k], top_vals[r][:k])), ranks[r])
                        for r in range(row, row + count))
        out.append(PromptLogprobs(rid, first, entries))
        row += count
    return tuple(out)
