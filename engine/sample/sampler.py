"""Turns the logits of the sampling rows into next tokens (and optional logprobs).

Order of operations per row: repetition / presence / frequency penalties; min_tokens (EOS and stop tokens
forbidden until enough tokens exist); then greedy argmax, or temperature -> top-k -> top-p -> min-p ->
a draw. Logprobs are those of the model's raw distribution (log-softmax of the unprocessed logits), which is
what OpenAI-style clients compare across settings.

Draws use the exponential-race trick (argmax of p / Exp(1) noise, equivalent to sampling from p). A
request with a seed draws its noise from its own generator, so its tokens do not depend on what else is in
the batch; other rows share the engine's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..outputs import TokenLogprob
from ..step import SamplingOptions


@dataclass(frozen=True, slots=True)
class SamplingRow:
    request_id: str
    options: SamplingOptions
    all_token_ids: list[int]
    num_prompt_tokens: int
    forbidden_ids: tuple[int, ...]  # EOS / stop tokens while min_tokens is not yet reached


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class Sampler:
    def __init__(self, device: torch.device, seed: int):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._request_generators.pop(rid, None)

    def _generator_for(self, row: SamplingRow) -> torch.Generator:
        gen = self._request_generators.get(row.request_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(row.options.seed & 0xFFFF_FFFF_FFFF_FFFF)
            self._request_generators[row.request_id] = gen
        return gen

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        logits = logits.float()
        raw = logits
        if any(r.options.has_penalties for r in rows):
            logits = self._apply_penalties(logits.clone(), rows)
        forbid = [(i, r.forbidden_ids) for i, r in enumerate(rows) if r.forbidden_ids]
        if forbid:
            logits = logits.clone() if logits is raw else logits
            for i, ids in forbid:
                logits[i, list(ids)] = float("-inf")

        greedy = [r.options.temperature == 0.0 for r in rows]
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        greedy_idx = [i for i, g in enumerate(greedy) if g]
        random_idx = [i for i, g in enumerate(greedy) if not g]
        if greedy_idx:
            gi = torch.tensor(greedy_idx, device=logits.device)
            tokens[gi] = logits[gi].argmax(dim=-1)
        if random_idx:
            ri = torch.tensor(random_idx, device=logits.device)
            tokens[ri] = self._sample(logits[ri], [rows[i] for i in random_idx])

        token_list = tokens.tolist()
        logprobs: list[TokenLogprob | None] = [None] * len(rows)
        want = [i for i, r in enumerate(rows) if r.options.logprobs is not None]
        if want:
            lp = torch.log_softmax(raw[want], dim=-1)
            k = max(rows[i].options.logprobs for i in want)
            top_vals, top_ids = lp.topk(k, dim=-1) if k > 0 else (lp[:, :0], lp[:, :0].long())
            chosen = lp.gather(1, tokens[want].unsqueeze(1)).squeeze(1).tolist()
            top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
            for j, i in enumerate(want):
                n = rows[i].options.logprobs
                logprobs[i] = TokenLogprob(token_list[i], chosen[j], dict(zip(top_ids[j][:n], top_vals[j][:n])))
        return SamplerOutput(token_list, logprobs)

    def _apply_penalties(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        vocab = logits.shape[-1]
        for i, r in enumerate(rows):
            p = r.options
            if not p.has_penalties:
                continue
            out_ids = [t for t in r.all_token_ids[r.num_prompt_tokens:] if 0 <= t < vocab]
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(t for t in r.all_token_ids if 0 <= t < vocab)), device=logits.device, dtype=torch.long)
                if len(seen):
                    vals = logits[i, seen]
                    logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if out_ids and (p.presence_penalty or p.frequency_penalty):
                counts = torch.bincount(torch.tensor(out_ids, device=logits.device), minlength=vocab).to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        return logits

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        dev = logits.device
        temps = torch.tensor([r.options.temperature for r in rows], device=dev, dtype=torch.float32)
        logits = logits / temps.unsqueeze(1)
        logits = apply_top_k_top_p(logits, [r.options.top_k for r in rows], [r.options.top_p for r in rows])
        probs = torch.softmax(logits, dim=-1)
        min_ps = [r.options.min_p for r in rows]
        if any(m > 0 for m in min_ps):
            min_p = torch.tensor(min_ps, device=dev, dtype=torch.float32).unsqueeze(1)
            probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        noise = torch.empty_like(probs)
        unseeded = [i for i, r in enumerate(rows) if r.options.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty((len(unseeded), probs.shape[1]), device=dev).exponential_(generator=self.generator)
        for i, r in enumerate(rows):
            if r.options.seed is not None:
                noise[i].exponential_(generator=self._generator_for(r))
        return (probs / noise.clamp_(min=1e-20)).argmax(dim=-1)


def apply_top_k_top_p(logits: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    """Set logits outside each row's top-k and top-p (nucleus) sets to -inf; k <= 0 and p = 1 are off.
    The most likely token always survives."""
    use_k = any(k > 0 for k in top_ks)
    use_p = any(p < 1.0 for p in top_ps)
    if not (use_k or use_p):
        return logits
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if use_k:
        # k >= vocab (however large: a client may send 2**70) keeps everything, like k <= 0
        ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], device=logits.device).unsqueeze(1)
        remove |= ranks >= ks
    if use_p:
        ps = torch.tensor(top_ps, device=logits.device, dtype=torch.float32).unsqueeze(1)
        probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
        remove |= mass_before >= ps
    remove[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
