"""Per-sequence sampling state kept across steps, indexed by the worker's slot of each sequence.

`SamplingTable` (host, numpy) holds each slot's `SamplingOptions` as columns: temperature, top-k, top-p,
min-p, penalties, seed, min_tokens, logprobs and the ids forbidden before min_tokens. A slot's row is written
once, when its sequence arrives (a `NewSeq`); a step then gathers its sampling rows' parameters with numpy
fancy indexing (`batch`), with no per-row Python.

`PenaltyCounts` (device) holds, for each slot whose sequence uses a penalty, how often each token occurs in
its output and which tokens its prompt has. A row is filled from the sequence's tokens when it arrives, and
the sampler adds each sampled token on the device right after sampling it, so the host never needs the
token's value for the next step's penalties (asynchronous scheduling relies on that).
"""

from __future__ import annotations

import numpy as np
import torch

from ..step import SamplingOptions
from .sampler import SamplingBatch

# Per-slot columns: dtype and the value of an unused slot.
_COLUMNS = {
    "greedy": (bool, False), "temperature": (np.float32, 1.0), "top_k": (np.int64, 0),  # top_k 0 = off
    "top_p": (np.float32, 1.0), "min_p": (np.float32, 0.0), "presence": (np.float32, 0.0),
    "frequency": (np.float32, 0.0), "repetition": (np.float32, 1.0), "seed": (np.int64, 0),
    "min_tokens": (np.int64, 0), "logprobs": (np.int64, -1),  # logprobs -1 = none
}


_no_bias = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def as_int64(seed: int) -> int:
    """A seed of any size (request seed + choice index may pass 2**63) as the int64 with the same low 64 bits."""
    seed &= 0xFFFF_FFFF_FFFF_FFFF
    return seed - 2**64 if seed >= 2**63 else seed


class SamplingTable:
    def __init__(self, vocab_size: int, seed: int, num_slots: int = 8):
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)  # seeds for sequences that bring none
        self._alloc(max(num_slots, 1), 4)

    def _alloc(self, n: int, width: int) -> None:
        """(Re)allocate the columns for n slots and `width` forbidden ids each, keeping what they hold."""
        for name, (dtype, fill) in _COLUMNS.items():
            column, old = np.full(n, fill, dtype), getattr(self, name, None)
            if old is not None:
                column[:len(old)] = old
            setattr(self, name, column)
        forbidden, old = np.full((n, width), -1, np.int64), getattr(self, "forbidden", None)
        if old is not None:
            forbidden[:old.shape[0], :old.shape[1]] = old
        self.forbidden = forbidden  # -1 pads
        self.bias: dict[int, tuple[np.ndarray, np.ndarray]] = getattr(self, "bias", {})  # slot -> (ids, values)

    def set(self, slot: int, options: SamplingOptions, *, forbidden: tuple[int, ...] | None = None,
            min_tokens: int | None = None) -> None:
        """Write a sequence's options into its slot. `forbidden` / `min_tokens` override the options' own
        (the sampler's row API passes the ids forbidden right now, with no limit)."""
        forbidden = options.forbidden_ids if forbidden is None else forbidden
        n, width = len(self.temperature), self.forbidden.shape[1]
        if slot >= n or len(forbidden) > width:
            self._alloc(max(2 * n, slot + 1) if slot >= n else n, max(width, len(forbidden)))
        greedy = options.temperature == 0.0
        self.greedy[slot] = greedy
        self.temperature[slot] = 1.0 if greedy else options.temperature  # the random path never divides by 0
        self.top_k[slot] = options.top_k if 0 < options.top_k < self.vocab_size else 0
        self.top_p[slot] = options.top_p
        self.min_p[slot] = options.min_p
        self.presence[slot] = options.presence_penalty
        self.frequency[slot] = options.frequency_penalty
        self.repetition[slot] = options.repetition_penalty
        seed = options.seed if options.seed is not None else int(self.rng.integers(0, 2**63))
        self.seed[slot] = as_int64(seed)
        self.min_tokens[slot] = (options.min_tokens if min_tokens is None else min_tokens) if forbidden else 0
        self.logprobs[slot] = -1 if options.logprobs is None else options.logprobs
        self.forbidden[slot] = -1
        self.forbidden[slot, :len(forbidden)] = forbidden
        self.bias.pop(slot, None)
        if options.logit_bias:
            self.bias[slot] = (np.array([t for t, _ in options.logit_bias], np.int64),
                               np.array([v for _, v in options.logit_bias], np.float32))

    def has_penalties(self, slot: int) -> bool:
        return bool(self.presence[slot] != 0 or self.frequency[slot] != 0 or self.repetition[slot] != 1)

    def batch(self, slots: np.ndarray, out_pos: np.ndarray) -> SamplingBatch:
        """The parameters of R sampling rows (`slots[i]` samples its output token number `out_pos[i]`)."""
        rows = np.arange(len(slots), dtype=np.int64)
        greedy = self.greedy[slots]
        random_rows = rows[~greedy]
        rs = slots[random_rows]
        top_k, top_p = self.top_k[rs], self.top_p[rs]
        kp = np.flatnonzero((top_k > 0) | (top_p < 1.0))
        pres, freq, rep = self.presence[slots], self.frequency[slots], self.repetition[slots]
        pen_rows = rows[(pres != 0) | (freq != 0) | (rep != 1)]
        active = out_pos < self.min_tokens[slots]
        forbid = self.forbidden[slots[active]]
        forbid_rows = np.repeat(rows[active], forbid.shape[1]).reshape(forbid.shape)
        keep = (forbid >= 0) & (forbid < self.vocab_size)  # -1 pads; an id past the logits cannot be sampled anyway
        lp = self.logprobs[slots]
        lp_rows = rows[lp >= 0]
        min_p = self.min_p[rs]
        bias_rows, bias_ids, bias_vals = _no_bias
        if self.bias:  # per-row Python only for the rows that have a logit_bias
            biased = [(row, self.bias[s]) for row, s in enumerate(slots.tolist()) if s in self.bias]
            if biased:
                bias_rows = np.concatenate([np.full(len(ids), row, np.int64) for row, (ids, _) in biased])
                bias_ids = np.concatenate([ids for _, (ids, _) in biased])
                bias_vals = np.concatenate([vals for _, (_, vals) in biased])
        return SamplingBatch(
            num_rows=len(slots), temperature=self.temperature[rs], seeds=self.seed[rs], out_pos=out_pos[random_rows],
            random_rows=random_rows, min_p=min_p, use_min_p=bool((min_p > 0).any()),
            kp_rows=kp.astype(np.int64), top_k=np.where(top_k[kp] > 0, top_k[kp], self.vocab_size), top_p=top_p[kp],
            pen_rows=pen_rows, pen_slots=slots[pen_rows], presence=pres[pen_rows], frequency=freq[pen_rows],
            repetition=rep[pen_rows], forbid_rows=forbid_rows[keep], forbid_ids=forbid[keep], lp_rows=lp_rows,
            lp_k=tuple(int(k) for k in lp[lp_rows]), bias_rows=bias_rows, bias_ids=bias_ids, bias_vals=bias_vals,
            has_bias=len(bias_rows) > 0)


class PenaltyCounts:
    """Output-token counts [slots, vocab] (int32) and prompt-token presence [slots, vocab] (bool), on the
    device, allocated when the first sequence with a penalty arrives."""

    def __init__(self, vocab_size: int, device: torch.device):
        self.vocab_size, self.device = vocab_size, device
        self.counts: torch.Tensor | None = None
        self.prompt_mask: torch.Tensor | None = None

    def ensure(self, num_slots: int) -> None:
        n = 0 if self.counts is None else self.counts.shape[0]
        if num_slots <= n:
            return
        size = max(num_slots, 2 * n, 8)
        counts = torch.zeros((size, self.vocab_size), dtype=torch.int32, device=self.device)
        mask = torch.zeros((size, self.vocab_size), dtype=torch.bool, device=self.device)
        if n:
            counts[:n], mask[:n] = self.counts, self.prompt_mask
        self.counts, self.prompt_mask = counts, mask

    @staticmethod
    def init_arrays(slots: list[int], token_lists: list[list[int]], num_prompt: list[int],
                    vocab_size: int) -> list[np.ndarray]:
        """Host arrays that (re)fill these slots' rows: [slots], then (slot, token) pairs of prompt tokens, then
        of output tokens. Token ids outside the vocabulary are dropped (they cannot be sampled anyway)."""
        prompt_slots, prompt_toks, out_slots, out_toks = [], [], [], []
        for slot, toks, n in zip(slots, token_lists, num_prompt):
            t = np.asarray(toks, dtype=np.int64)
            t = np.where((t >= 0) & (t < vocab_size), t, -1)
            p, o = t[:n][t[:n] >= 0], t[n:][t[n:] >= 0]
            prompt_slots.append(np.full(len(p), slot, np.int64))
            prompt_toks.append(p)
            out_slots.append(np.full(len(o), slot, np.int64))
            out_toks.append(o)
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        return [np.asarray(slots, dtype=np.int64), cat(prompt_slots), cat(prompt_toks), cat(out_slots), cat(out_toks)]

    def apply_init(self, slots: torch.Tensor, prompt_slots: torch.Tensor, prompt_toks: torch.Tensor,
                   out_slots: torch.Tensor, out_toks: torch.Tensor) -> None:
        """Device half of `init_arrays`: clear the rows, then count the tokens."""
        self.counts.index_fill_(0, slots, 0)
        self.prompt_mask.index_fill_(0, slots, False)
        if prompt_slots.numel():
            true = torch.ones((), dtype=torch.bool, device=self.device)
            self.prompt_mask.index_put_((prompt_slots, prompt_toks), true)
        if out_slots.numel():
            self.counts.index_put_((out_slots, out_toks), torch.ones((), dtype=torch.int32, device=self.device),
                                   accumulate=True)

    def add(self, slots: torch.Tensor, tokens: torch.Tensor) -> None:
        """Count one newly sampled token per slot."""
        self.counts.index_put_((slots, tokens), torch.ones((), dtype=torch.int32, device=self.device), accumulate=True)

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.counts.index_select(0, slots), self.prompt_mask.index_select(0, slots)
