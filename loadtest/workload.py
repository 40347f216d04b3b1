"""The requests of a run: seeded prompts and output lengths, built before anything is sent.

Three sources, all drawn from one `numpy.random.Generator`, so a seed fixes the whole workload:

- random: for the completions endpoint a list of random token ids (OpenAI accepts a list of ints as the
  prompt, so no tokenizer is needed and the prompt length is exact); for chat, text of random words
  (about one token per word; the server's `usage` gives the true count);
- shared prefix: G groups, each with one random prefix of `prefix_len` tokens (or words); request i joins
  group i mod G and appends its own random suffix, so a prefix cache can reuse the prefix's blocks;
- a prompt file (see `loadtest.dataset`), sampled in a seeded random order, cycling when it is short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadtest.config import Endpoint, WorkloadConfig
from loadtest.dataset import load_prompt_file

# Common English words; each is usually one token with its leading space in BPE vocabularies.
_WORDS = tuple(
    """the of and to in is was for on that with as by at from his her they this had are not but be have
    one all were which their there been has when who will more would no if out so said what up its about
    into than them can only other new some could time these two may then do first any my now such like our
    over man me even most made after also did many before must through back years where much your way well
    down should because each just those people how too little state good very make world still own see men
    work long get here between both life being under never day same another know while last might us great
    old year off come since against go came right used take three small water place found house light""".split()
)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: a token-id list or a text prompt, and how many tokens to ask for."""

    prompt: tuple[int, ...] | str
    max_tokens: int
    prompt_len: int | None  # exact token count for token-id prompts; None for text
    group: int | None = None  # shared-prefix group

    def payload_prompt(self) -> list[int] | str:
        return list(self.prompt) if isinstance(self.prompt, tuple) else self.prompt


def _tokens(rng: np.random.Generator, count: int, id_range: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(t) for t in rng.integers(id_range[0], id_range[1], size=count))


def _words(rng: np.random.Generator, count: int) -> str:
    return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=count))


def _random(cfg: WorkloadConfig, endpoint: Endpoint, rng: np.random.Generator, count: int) -> list[RequestSpec]:
    in_lens, out_lens = cfg.input_len.sample(rng, count), cfg.output_len.sample(rng, count)
    specs = []
    for n_in, n_out in zip(in_lens, out_lens):
        if endpoint == "completions":
            specs.append(RequestSpec(_tokens(rng, int(n_in), cfg.token_id_range), int(n_out), int(n_in)))
        else:
            specs.append(RequestSpec(_words(rng, int(n_in)), int(n_out), None))
    return specs


def _shared_prefix(cfg: WorkloadConfig, endpoint: Endpoint, rng: np.random.Generator, count: int) -> list[RequestSpec]:
    groups = cfg.prefix_groups
    if endpoint == "completions":
        prefixes: list = [_tokens(rng, cfg.prefix_len, cfg.token_id_range) for _ in range(groups)]
    else:
        prefixes = [_words(rng, cfg.prefix_len) for _ in range(groups)]
    in_lens, out_lens = cfg.input_len.sample(rng, count), cfg.output_len.sample(rng, count)
    specs = []
    for i, (n_in, n_out) in enumerate(zip(in_lens, out_lens)):
        g = i % groups
        if endpoint == "completions":
            prompt = prefixes[g] + _tokens(rng, int(n_in), cfg.token_id_range)
            specs.append(RequestSpec(prompt, int(n_out), len(prompt), g))
        else:
            specs.append(RequestSpec(prefixes[g] + " " + _words(rng, int(n_in)), int(n_out), None, g))
    return specs


def _from_file(cfg: WorkloadConfig, rng: np.random.Generator, count: int) -> list[RequestSpec]:
    assert cfg.dataset is not None
    entries = load_prompt_file(cfg.dataset).entries
    order = np.concatenate([rng.permutation(len(entries)) for _ in range(-(-count // len(entries)))])[:count]
    out_lens = cfg.output_len.sample(rng, count)
    return [
        RequestSpec(entries[i].prompt, entries[i].max_tokens or int(n_out), None)
        for i, n_out in zip(order, out_lens)
    ]


def build_workload(cfg: WorkloadConfig, endpoint: Endpoint, rng: np.random.Generator, count: int | None = None) -> list[RequestSpec]:
    """`count` (default `cfg.num_requests`) request specs, fully determined by `rng`'s state."""
    count = cfg.num_requests if count is None else count
    if count == 0:
        return []
    if cfg.dataset is not None:
        return _from_file(cfg, rng, count)
    if cfg.prefix_groups:
        return _shared_prefix(cfg, endpoint, rng, count)
    return _random(cfg, endpoint, rng, count)


def describe_workload(cfg: WorkloadConfig, endpoint: Endpoint) -> dict:
    """The workload as it goes into the results file."""
    if cfg.dataset is not None:
        kind = "dataset"
    elif cfg.prefix_groups:
        kind = "shared_prefix"
    else:
        kind = "random_tokens" if endpoint == "completions" else "random_words"
    out = {
        "kind": kind,
        "num_requests": cfg.num_requests,
        "output_len": cfg.output_len.describe(),
    }
    if cfg.dataset is not None:
        out["dataset"] = str(cfg.dataset)
    else:
        out["input_len"] = cfg.input_len.describe()
        if endpoint == "completions":
            out["token_id_range"] = list(cfg.token_id_range)
    if cfg.prefix_groups:
        out["shared_prefix_groups"] = cfg.prefix_groups
        out["shared_prefix_len"] = cfg.prefix_len
    return out
