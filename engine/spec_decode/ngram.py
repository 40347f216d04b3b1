"""`NgramProposer`: prompt-lookup drafts, no model.

For a sequence ending in tokens `... a b c`, find the latest earlier place where the same last n tokens
occur (n from `prompt_lookup_max` down to `prompt_lookup_min`: a longer match predicts better) and propose
the k tokens that followed it there. Text that copies from its prompt (editing code, fixing typos,
extracting fields) repeats long runs, and those runs come back as drafts.

One numpy pass per n over the sequence: a sliding-window comparison finds every occurrence of the pattern.
"""

from __future__ import annotations

import numpy as np


class NgramProposer:
    def __init__(self, num_speculative_tokens: int, min_n: int, max_n: int):
        self.k, self.min_n, self.max_n = num_speculative_tokens, min_n, max_n

    def propose(self, token_ids: list[int], max_tokens: int | None = None) -> list[int]:
        """Up to `min(k, max_tokens)` tokens predicted to follow `token_ids`; [] when no n-gram matches."""
        k = self.k if max_tokens is None else min(self.k, max_tokens)
        n_tokens = len(token_ids)
        if k <= 0 or n_tokens <= self.min_n:
            return []
        # Only the window a match can come from matters; 4096 tokens back is far more than prompts here hold.
        tokens = np.asarray(token_ids[-4096:], dtype=np.int64)
        length = len(tokens)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            pattern = tokens[length - n:]
            windows = np.lib.stride_tricks.sliding_window_view(tokens[:length - 1], n)  # starts 0 .. length - 1 - n
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n  # the latest occurrence, excluding the pattern itself
                return tokens[start:start + k].tolist()
        return []
