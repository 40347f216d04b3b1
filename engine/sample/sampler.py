"""Turns the logits of the sampling rows into next tokens (and optional logprobs), on the logits' device.

Order of operations per row: repetition / presence / frequency penalties; min_tokens (EOS and stop tokens
forbidden until enough tokens exist); then greedy argmax, or temperature -> top-k -> top-p -> min-p ->
a draw. Logprobs are those of the model's raw distribution (log-softmax of the unprocessed logits), which is
what OpenAI-style clients compare across settings.

Everything is vectorized over the batch: a step's rows arrive as one `SamplingBatch` of small arrays (the
parameters of each row, and which rows need which stage), built on the host with numpy
(`engine.sample.tables`) and uploaded with the rest of the step. Each stage runs only on the rows that need
it, and is an exact identity for a row that does not use it, so a row's token never depends on what else is
in the batch. When every row is greedy and nothing else applies, sampling is one argmax.

Draws use the exponential race (argmax of p / Exp(1) noise, equivalent to sampling from p) with
counter-based noise (`engine.sample.noise`): a pure function of the sequence's seed, the output position and
the token id, so seeded output does not depend on the batch, on preemption or on the worker process.

The result leaves the device as one int32 tensor (`SampleResult.packed`): the token ids, then, if any row
asked for logprobs, the chosen tokens' logprobs, the top ids and the top logprobs (floats as their bits);
`unpack` reads it back on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..outputs import TokenLogprob
from ..step import SamplingOptions
from .bitmask import apply_token_bitmask
from .noise import exponential_noise, row_keys, token_keys


@dataclass(frozen=True, slots=True)
class SamplingRow:
    """One row given as plain values: the simple way in for tests and one-off callers (`Sampler.__call__`)."""

    request_id: str
    options: SamplingOptions
    all_token_ids: list[int]
    num_prompt_tokens: int
    forbidden_ids: tuple[int, ...]  # EOS / stop tokens while min_tokens is not yet reached


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


@dataclass(frozen=True)
class SamplingBatch:
    """The sampling parameters of one step's R rows. The array fields are numpy on the host and become
    device tensors after the upload (`with_arrays`); the rest is host-side metadata.

    Rows are subsets by index: `random_rows` sample (the rest take the argmax), `kp_rows` (indices into
    the random rows) use top-k or top-p, `pen_rows` use a penalty, `forbid_rows`/`forbid_ids` are the
    (row, token) pairs forbidden now, `lp_rows` return logprobs (`lp_k` of them each)."""

    num_rows: int
    temperature: Any  # [Rr] float32
    seeds: Any  # [Rr] int64
    out_pos: Any  # [Rr] int64
    random_rows: Any  # [Rr] int64
    min_p: Any  # [Rr] float32
    kp_rows: Any  # [Rk] int64
    top_k: Any  # [Rk] int64, vocab size when off
    top_p: Any  # [Rk] float32
    pen_rows: Any  # [Rp] int64
    pen_slots: Any  # [Rp] int64, rows of the penalty tables
    presence: Any  # [Rp] float32
    frequency: Any  # [Rp] float32
    repetition: Any  # [Rp] float32
    forbid_rows: Any  # [F] int64
    forbid_ids: Any  # [F] int64
    lp_rows: Any  # [W] int64
    bias_rows: Any = None  # [B] int64: logit_bias (row, token, value) triples
    bias_ids: Any = None  # [B] int64
    bias_vals: Any = None  # [B] float32
    use_min_p: bool = False
    lp_k: tuple[int, ...] = ()
    has_bias: bool = False

    ARRAYS = ("temperature", "seeds", "out_pos", "random_rows", "min_p", "kp_rows", "top_k", "top_p", "pen_rows",
              "pen_slots", "presence", "frequency", "repetition", "forbid_rows", "forbid_ids", "lp_rows",
              "bias_rows", "bias_ids", "bias_vals")

    def arrays(self) -> list:
        return [getattr(self, name) for name in self.ARRAYS]

    def with_arrays(self, arrays: list) -> "SamplingBatch":
        return dataclasses.replace(self, **dict(zip(self.ARRAYS, arrays)))

    @property
    def num_random(self) -> int:
        return len(self.random_rows)

    @property
    def num_penalized(self) -> int:
        return len(self.pen_rows)

    @property
    def max_logprobs(self) -> int:
        return max(self.lp_k, default=0)

    def packed_size(self) -> int:
        """int32 values in the packed result."""
        w, k = len(self.lp_k), self.max_logprobs
        return self.num_rows + (w + 2 * w * k if w else 0)


@dataclass(frozen=True, slots=True)
class SampleResult:
    tokens: torch.Tensor  # [R] int64, on the device
    packed: torch.Tensor  # [packed_size] int32: what goes to the host


class Sampler:
    def __init__(self, device: torch.device, seed: int):
        self.device = device
        self._rng = np.random.default_rng(seed)  # the row API: seeds for each call's unseeded rows
        self._token_keys: torch.Tensor | None = None
        self._neg_inf = torch.tensor(float("-inf"), device=device)

    def token_keys(self, vocab_size: int) -> torch.Tensor:
        if self._token_keys is None or self._token_keys.numel() != vocab_size:
            self._token_keys = token_keys(vocab_size, self.device)
        return self._token_keys

    @torch.no_grad()
    def sample(self, logits: torch.Tensor, batch: SamplingBatch,
               penalties: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
               grammar_bitmask: torch.Tensor | None = None) -> SampleResult:
        """Sample one token per row of `logits` [R, V]. `batch` holds device tensors; `penalties(pen_slots)`
        gives the penalized rows' output-token counts and prompt-token masks; `grammar_bitmask` [R, W]
        restricts each row to the tokens its grammar allows (all ones for a row without one), in place and
        before anything else, so logprobs too are those of the constrained distribution."""
        if grammar_bitmask is not None:
            logits = apply_token_bitmask(logits, grammar_bitmask)
        if not (batch.num_random or batch.num_penalized or len(batch.forbid_rows) or batch.lp_k or batch.has_bias):
            # all greedy: one argmax, on the logits as they are (widening bf16 to fp32 is exact: same argmax)
            tokens = logits.argmax(dim=-1)
            return SampleResult(tokens, tokens.to(torch.int32))
        raw = logits.float()
        x = raw
        if batch.num_penalized:
            counts, prompt_mask = penalties(batch.pen_slots)
            x = raw.clone()
            sub = apply_penalties(x.index_select(0, batch.pen_rows), counts, prompt_mask, batch.presence,
                                  batch.frequency, batch.repetition)
            x.index_copy_(0, batch.pen_rows, sub)
        if batch.has_bias:  # logit_bias: added to the logits (logprobs stay those of the model)
            x = x.index_put((batch.bias_rows, batch.bias_ids), batch.bias_vals, accumulate=True)
        if len(batch.forbid_rows):
            x = x.clone() if x is raw else x
            x.index_put_((batch.forbid_rows, batch.forbid_ids), self._neg_inf)
        tokens = x.argmax(dim=-1)
        if batch.num_random:
            drawn = self._draw(x if batch.num_random == batch.num_rows else x.index_select(0, batch.random_rows),
                               batch)
            if batch.num_random == batch.num_rows:
                tokens = drawn
            else:
                tokens.index_copy_(0, batch.random_rows, drawn)
        return SampleResult(tokens, self._pack(raw, tokens, batch))

    def _draw(self, x: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
        x = x / b.temperature.unsqueeze(1)
        if len(b.kp_rows):
            x.index_copy_(0, b.kp_rows, apply_top_k_top_p(x.index_select(0, b.kp_rows), b.top_k, b.top_p))
        probs = torch.softmax(x, dim=-1)
        if b.use_min_p:
            probs = probs.masked_fill(probs < b.min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True), 0.0)
        noise = exponential_noise(row_keys(b.seeds, b.out_pos), self.token_keys(x.shape[1]))
        return (probs / noise).argmax(dim=-1)

    @staticmethod
    def _pack(raw: torch.Tensor, tokens: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
        if not b.lp_k:
            return tokens.to(torch.int32)
        lp = torch.log_softmax(raw.index_select(0, b.lp_rows), dim=-1)
        chosen = lp.gather(1, tokens.index_select(0, b.lp_rows).unsqueeze(1)).squeeze(1)
        k = b.max_logprobs
        top_vals, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        return torch.cat([tokens.to(torch.int32), chosen.view(torch.int32), top_ids.to(torch.int32).reshape(-1),
                          top_vals.contiguous().view(torch.int32).reshape(-1)])

    # ---- the row API ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """Sample from `logits` [R, V] for rows given as plain values (builds the batch and the penalty
        inputs on the spot: per-row Python, for tests and one-off use, not the engine's step)."""
        from .tables import PenaltyCounts, SamplingTable

        vocab = logits.shape[1]
        table = SamplingTable(vocab, seed=int(self._rng.integers(2**63)), num_slots=len(rows))
        for i, r in enumerate(rows):
            table.set(i, r.options, forbidden=r.forbidden_ids, min_tokens=np.iinfo(np.int64).max)
        out_pos = np.array([len(r.all_token_ids) - r.num_prompt_tokens for r in rows], dtype=np.int64)
        host = table.batch(np.arange(len(rows), dtype=np.int64), out_pos)
        batch = host.with_arrays([torch.from_numpy(a).to(self.device) for a in host.arrays()])
        counts = PenaltyCounts(vocab, self.device)
        if host.num_penalized:
            counts.ensure(len(rows))
            pen = [int(i) for i in host.pen_rows]
            init = PenaltyCounts.init_arrays(pen, [rows[i].all_token_ids for i in pen],
                                             [rows[i].num_prompt_tokens for i in pen], vocab)
            counts.apply_init(*[torch.from_numpy(a).to(self.device) for a in init])
        result = self.sample(logits, batch, counts.gather)
        tokens, logprobs = unpack(result.packed.cpu().numpy(), host)
        return SamplerOutput(tokens, logprobs)


def unpack(packed: np.ndarray, batch: SamplingBatch) -> tuple[list[int], list[TokenLogprob | None]]:
    """The host side of `Sampler._pack`: token ids, and a TokenLogprob for each row that asked for them."""
    r = batch.num_rows
    tokens = packed[:r].tolist()
    logprobs: list[TokenLogprob | None] = [None] * r
    if batch.lp_k:
        w, k = len(batch.lp_k), batch.max_logprobs
        chosen = packed[r:r + w].view(np.float32).tolist()
        top_ids = packed[r + w:r + w + w * k].reshape(w, k).tolist()
        top_vals = packed[r + w + w * k:r + w + 2 * w * k].view(np.float32).reshape(w, k).tolist()
        for j, (row, n) in enumerate(zip(batch.lp_rows.tolist(), batch.lp_k)):
            logprobs[row] = TokenLogprob(tokens[row], chosen[j], dict(zip(top_ids[j][:n], top_vals[j][:n])))
    return tokens, logprobs


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, prompt_mask: torch.Tensor, presence: torch.Tensor,
                    frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Penalties for rows with output-token counts `counts` [R, V] and prompt tokens `prompt_mask` [R, V]:
    repetition (divides positive and multiplies negative logits of every token seen in the prompt or the
    output), then frequency (x count) and presence (x 1 if generated at all), output tokens only. Rows with
    neutral values (0, 0, 1) come out unchanged."""
    generated = counts > 0
    rep = repetition.unsqueeze(1)
    logits = torch.where(prompt_mask | generated, torch.where(logits > 0, logits / rep, logits * rep), logits)
    return logits - (frequency.unsqueeze(1) * counts.to(logits.dtype)
                     + presence.unsqueeze(1) * generated.to(logits.dtype))


def apply_top_k_top_p(logits: torch.Tensor, top_ks, top_ps) -> torch.Tensor:
    """Set logits outside each row's top-k and top-p (nucleus) sets to -inf. `top_ks` / `top_ps`: per row,
    as tensors or lists; k <= 0 or k >= vocab (however large: a client may send 2**70) and p = 1 are off, and
    a row with both off comes out unchanged. The most likely token always survives."""
    vocab = logits.shape[-1]
    dev = logits.device
    if not isinstance(top_ks, torch.Tensor):
        top_ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], dtype=torch.int64, device=dev)
    if not isinstance(top_ps, torch.Tensor):
        top_ps = torch.tensor(top_ps, dtype=torch.float32, device=dev)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=dev).unsqueeze(0)
    remove = ranks >= top_ks.unsqueeze(1)
    probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
    # p = 1 is off even where rounding lets mass_before reach 1.0
    remove |= (mass_before >= top_ps.unsqueeze(1)) & (top_ps < 1.0).unsqueeze(1)
    remove[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
