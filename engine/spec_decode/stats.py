"""`SpecDecodeStats`: what one engine step's speculation did, for metrics (vLLM's counter names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpecDecodeStats:
    """`num_drafts`: sequences that were sent drafts; `num_draft_tokens`: the drafts' tokens;
    `num_accepted_tokens`: of those, the ones verified and kept; `accepted_per_pos[i]`: drafts whose token
    at position i (0-based) was accepted. Acceptance rate = accepted / draft tokens; mean accepted length
    per draft = 1 + accepted / drafts (the bonus token counted)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: tuple[int, ...] = ()

    @classmethod
    def of(cls, drafts_and_accepted: list[tuple[int, int]], k: int) -> "SpecDecodeStats":
        """From (number of draft tokens, number accepted) of each sequence that was sent drafts."""
        per_pos = [0] * k
        for _, accepted in drafts_and_accepted:
            for i in range(accepted):
                per_pos[i] += 1
        return cls(len(drafts_and_accepted), sum(d for d, _ in drafts_and_accepted),
                   sum(a for _, a in drafts_and_accepted), tuple(per_pos))
