"""Helpers for the speculative-decoding tests: drive an engine to the end, keeping every step's speculation
statistics, and prompts that n-gram lookup can draft from."""

from __future__ import annotations

import torch

from engine import SamplingParams
from engine.engine import LLMEngine
from engine.spec_decode import SpecDecodeStats


def run_all(engine: LLMEngine, prompts, params: SamplingParams | list[SamplingParams]):
    """Generate every prompt to the end; returns ({request id: [token ids of each choice]}, summed stats,
    {request id: [(finish_reason, text, logprobs) of each choice]})."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    tokens: dict[str, list[list[int]]] = {}
    extra: dict[str, list[list]] = {}
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        engine.add_request(f"r{i}", prompt, p)
        tokens[f"r{i}"] = [[] for _ in range(p.n)]
        extra[f"r{i}"] = [[None, "", []] for _ in range(p.n)]
    drafts = draft_tokens = accepted = 0
    while engine.has_unfinished_requests():
        out = engine.step()
        for d in out.deltas:
            tokens[d.request_id][d.index].extend(d.new_token_ids)
            e = extra[d.request_id][d.index]
            e[1] += d.new_text
            if d.new_logprobs:
                e[2].extend(d.new_logprobs)
            if d.finished:
                e[0] = d.finish_reason
        s = out.stats.spec_decode
        if s is not None:
            drafts, draft_tokens, accepted = drafts + s.num_drafts, draft_tokens + s.num_draft_tokens, \
                accepted + s.num_accepted_tokens
    return tokens, SpecDecodeStats(drafts, draft_tokens, accepted), extra


def repetitive_prompts(n: int, vocab: int, seed: int = 0, length: int = 24) -> list[list[int]]:
    """Prompts that repeat a random phrase, so prompt lookup has something to propose from the start."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        phrase = torch.randint(3, vocab, (length // 3 + i % 3,), generator=g).tolist()
        out.append((phrase * 4)[:length + i])
    return out


def save_loopy_model(path, arch: str = "llama", layer_scale: float = 0.08, with_tokenizer: bool = False) -> str:
    """A random tiny model (tied embeddings) whose layers' output projections are scaled down, so its
    residual stream is mostly the input token's embedding: greedy output runs of one token broken by jumps
    (like `148 148 148 143 22 22 ...`). Prompt lookup then proposes drafts that are often right and sometimes
    wrong, which is what these tests need; a plain random tiny model almost never repeats itself.
    `with_tokenizer`: the default model's tokenizer and vocabulary (llama only), for a server with text."""
    from transformers import AutoModelForCausalLM

    from tests.engine.conftest import tiny_hf_config

    cfg = tiny_hf_config(arch)
    cfg.tie_word_embeddings = True
    if with_tokenizer:
        from engine.models.tiny import DEFAULT_VOCAB

        cfg.vocab_size = DEFAULT_VOCAB
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(layer_scale)
            layer.mlp.down_proj.weight.mul_(layer_scale)
    model.save_pretrained(path)
    if with_tokenizer:
        import shutil

        from engine.models.resolve import resolve_model

        src = resolve_model(None).path
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / name).is_file():
                shutil.copy(src / name, path / name)
    return str(path)
