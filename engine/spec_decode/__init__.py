"""Speculative decoding: propose several tokens cheaply on the host, verify them in one forward pass.

    config.py  `SpeculativeConfig`: the method, k, the n-gram sizes, the batch size above which it is off
    ngram.py   `NgramProposer`: prompt lookup (the tokens that followed the latest earlier match of the
               sequence's last n tokens)
    draft_model.py  `DraftProposer`: a smaller model's argmax drafts, batched across sequences, with its own
               paged KV cache (catch-up after verification, re-prefill after preemption)
    draft_config.py  the draft model resolved and checked against the target (vocabulary, shape, early exit)
    verify.py  the worker's rows per sequence and the accepted-prefix rule (exact for greedy and sampling)
    penalties.py  penalties at draft positions: prior drafts counted, only kept tokens recorded
    stats.py   `SpecDecodeStats`: drafts, draft tokens, accepted tokens (in total and per position)

Where the pieces sit: the engine proposes drafts for its decoding requests before each step
(`LLMEngine._propose_drafts`); the scheduler counts 1 + k tokens for such a request against the token
budget and the KV blocks; the model runner computes the logits of all k + 1 positions in the step's one
varlen forward, samples each position as it would without speculation and keeps the longest prefix the
drafts predicted; the engine appends those tokens and rolls the request's computed tokens back past the
rejected drafts.
"""

from .config import SpeculativeConfig
from .ngram import NgramProposer
from .stats import SpecDecodeStats

__all__ = ["NgramProposer", "SpecDecodeStats", "SpeculativeConfig"]
