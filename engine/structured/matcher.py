"""One sequence's grammar state, kept by the engine beside the sequence (`LLMEngine`'s per-sequence state).

The matcher advances with every token the engine appends, so it always reflects all of the sequence's
output. That is what keeps it right across preemption: a preempted sequence is recomputed from its tokens,
which do not change, and its matcher is neither touched nor rebuilt. Before each step the engine asks the
matcher of each grammar sequence that samples for its bitmask of allowed next tokens (`fill_bitmasks`).
"""

from __future__ import annotations

import numpy as np


class SequenceGrammar:
    def __init__(self, compiled) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar does not allow it (the sampler's mask should
        have made that impossible)."""
        return bool(self._matcher.accept_token(token_id))

    @property
    def terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted: the sequence must end."""
        return bool(self._matcher.is_terminated())

    def fill(self, bitmask, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)


def fill_bitmasks(grammars: list[SequenceGrammar], vocab_size: int) -> np.ndarray:
    """The next-token bitmasks of these sequences, one int32 row each ([G, ceil(vocab / 32)])."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
    for row, g in enumerate(grammars):
        g.fill(bitmask, row)
    return bitmask.numpy()
