"""`kvserve eval-ppl`: perplexity and greedy agreement of several quantization configurations, one process.

For each configuration (`base`, `int8`, `int4`, `fp8`, `kv-int8`, `kv-fp8_e4m3`, `kv-fp8_e5m2`, or a
combination such as `int8+kv-int8`) the model is loaded once with those settings and

- **perplexity**: a sliding window over the text (`--window` tokens, moved by `--stride`): each window is
  one prefill through the engine's own model runner and KV cache (so an 8-bit cache is written and read
  back, exactly as in serving), and only the tokens not scored by an earlier window are scored, each with
  at least `window - stride` tokens of context. ppl = exp(mean negative log-likelihood).
- **greedy agreement** with the first configuration (the baseline): the same prompts (the first
  `--prompt-tokens` tokens of each paragraph of the text) generated greedily for `--max-tokens` tokens;
  reported as the share of generated tokens before the first difference, and the share of prompts whose
  whole continuation is identical.

The text is `engine/tools/data/eval_text.txt` (about 5 KB of English prose written for kvserve, shipped with
it) unless `--text` names another file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ATTENTION_BACKENDS, EngineArgs
from ..quantization.config import KV_CACHE_DTYPES, QUANT_METHODS

DEFAULT_TEXT = Path(__file__).parent / "data" / "eval_text.txt"


@dataclass(frozen=True)
class EvalConfig:
    name: str
    quantization: str | None
    kv_cache_dtype: str
    quantize_lm_head: bool = True
    group_size: int | None = None  # int4 only (`int4-g32`); None: the engine's default
    attention_backend: str = "auto"  # `attn-torch`: the pure-torch attention, to compare with the cpu backend
    enforce_eager: bool = False  # `eager`: every step through the model's forward (no one-call C decode step)

    def build(self, base_args: EngineArgs):
        """An `LLM` of `base_args` with this configuration's weight and KV-cache formats and attention backend
        (`CONFIG_OPTIONS`: the CLIs refuse them as flags); `--enforce-eager` applies to every configuration."""
        from ..llm import LLM

        args = dataclasses.replace(base_args, quantization=self.quantization, kv_cache_dtype=self.kv_cache_dtype,
                                   quantize_lm_head=self.quantize_lm_head, quantization_group_size=self.group_size,
                                   attention_backend=self.attention_backend,
                                   enforce_eager=self.enforce_eager or base_args.enforce_eager)
        return LLM(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)})


# the engine options a configuration's name sets (EvalConfig.build replaces them)
CONFIG_OPTIONS = ("quantization", "kv_cache_dtype", "quantize_lm_head", "quantization_group_size", "attention_backend")


def refuse_config_flags(base_args: EngineArgs) -> None:
    """SystemExit naming the first CONFIG_OPTIONS flag given on the command line (`kvserve eval-ppl`, `kvserve
    speed`): each configuration's name sets it, so the flag would be silently replaced."""
    defaults = EngineArgs()
    for name in CONFIG_OPTIONS:
        if getattr(base_args, name) != getattr(defaults, name):
            raise SystemExit(f"{name}: set it per configuration with --configs, not as a flag")


def parse_config(name: str) -> EvalConfig:
    """`base`, a weight format (`int4-g<N>`: int4 with group size N), `kv-<kv_cache_dtype>`, `fphead` (keep
    the LM head at the model's dtype), `attn-<attention backend>` (e.g. `attn-torch`), `eager` (enforce_eager:
    no one-call C decode step), or several joined by `+`."""
    quant, kv, head, group, attn, eager = None, "auto", True, None, "auto", False
    for part in name.split("+"):
        if part in ("base", "fp32"):
            continue
        if part == "fphead":
            head = False
        elif part == "eager" and not eager:
            eager = True
        elif part.startswith("attn-") and part[5:] in ATTENTION_BACKENDS[1:] and attn == "auto":
            attn = part[5:]
        elif part.startswith("int4-g") and part[6:].isdigit() and quant is None:
            quant, group = "int4", int(part[6:])
        elif part in QUANT_METHODS and quant is None:
            quant = part
        elif part.startswith("kv-") and part[3:] in KV_CACHE_DTYPES and kv == "auto":
            kv = part[3:]
        else:
            raise ValueError(f"configs: {name!r} is not base, one of {QUANT_METHODS}, kv-<one of "
                             f"{KV_CACHE_DTYPES[1:]}>, int4-g<N>, fphead, attn-<one of {ATTENTION_BACKENDS[1:]}>, "
                             "eager, or such parts joined by '+'")
    return EvalConfig(name, quant, kv, head, group, attn, eager)


@dataclass(frozen=True)
class EvalResult:
    config: str
    weight_mib: float
    kv_bytes_per_token: int
    perplexity: float
    scored_tokens: int
    greedy_token_agreement: float
    greedy_identical_prompts: float
    seconds: float


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index) of each window; every token but the first is scored exactly once."""
    out, prev_end, begin = [], 0, 0
    while prev_end < num_tokens:
        end = min(begin + window, num_tokens)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end, begin = end, begin + stride
    return out


@torch.inference_mode()
def perplexity(runner, token_ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """exp(mean NLL) of token_ids under the runner's model, and the number of tokens scored."""
    from ..worker.host_batch import HostBatch

    bs = runner.block_size
    nll, count = 0.0, 0
    for begin, end, first in windows(len(token_ids), window, stride):
        n = end - begin
        positions = np.arange(n, dtype=np.int64)
        rows = np.arange(first - 1 - begin, n - 1, dtype=np.int64)  # row r predicts token begin + r + 1
        table = np.arange(-(-n // bs), dtype=np.int32)[None, :]  # blocks 0.. : slot = position
        hb = HostBatch(np.asarray(token_ids[begin:end], dtype=np.int64), positions, np.array([n]), np.array([n]),
                       table, positions.copy(), rows, np.array([0]))
        logits = runner.model.compute_logits(runner.forward(hb)).float()
        targets = torch.tensor(token_ids[first:end], device=logits.device)
        logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])
        nll -= float(logp.sum())
        count += len(rows)
    return math.exp(nll / count), count


def greedy(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from ..sampling_params import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp)]


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """(share of tokens before the first difference, share of identical continuations)."""
    prefix = 0
    for r, o in zip(reference, other, strict=True):
        k = next((i for i, (a, b) in enumerate(zip(r, o)) if a != b), min(len(r), len(o)))
        prefix += k
    total = sum(len(r) for r in reference)
    return prefix / total, sum(r == o for r, o in zip(reference, other)) / len(reference)


def evaluate(base_args: EngineArgs, configs: list[EvalConfig], text: str, window: int, stride: int,
             prompt_tokens: int, max_tokens: int, log=lambda line: print(line, flush=True)) -> list[EvalResult]:
    results, reference = [], None
    for cfg in configs:
        t0 = time.perf_counter()
        llm = cfg.build(base_args)
        try:
            tok = llm.tokenizer
            ids = tok(text)["input_ids"]
            paragraphs = [p for p in text.split("\n\n") if p.strip()]
            prompts = [tok(p)["input_ids"][:prompt_tokens] for p in paragraphs]
            runner = llm.engine.runner
            ppl, scored = perplexity(runner, ids, window, stride)
            outs = greedy(llm, prompts, max_tokens)
            if reference is None:
                reference = outs
            tok_agree, identical = agreement(reference, outs)
            results.append(EvalResult(cfg.name, runner.weight_report.bytes_after / 2**20,
                                      runner.config.model.kv_bytes_per_token, ppl, scored, tok_agree, identical,
                                      time.perf_counter() - t0))
            log(format_row(results[0], results[-1]))
        finally:
            llm.shutdown()
            del llm
    return results


def format_row(base: EvalResult, r: EvalResult) -> str:
    delta = 100.0 * (r.perplexity / base.perplexity - 1.0)
    return (f"{r.config:<16} {r.weight_mib:9.1f} {r.kv_bytes_per_token:9,d} {r.perplexity:9.3f} {delta:+7.2f}% "
            f"{100 * r.greedy_token_agreement:9.1f}% {100 * r.greedy_identical_prompts:9.1f}% {r.seconds:7.1f}")


HEADER = (f"{'config':<16} {'weights':>9} {'KV B/tok':>9} {'ppl':>9} {'vs base':>8} {'greedy':>10} {'identical':>10} "
          f"{'seconds':>7}\n{'':<16} {'MiB':>9} {'':>9} {'':>9} {'':>8} {'agreement':>10} {'prompts':>10}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    EngineArgs.add_cli_args(parser)
    e = parser.add_argument_group("evaluation")
    e.add_argument("--configs", default="base,int8,int4,kv-int8,kv-fp8_e4m3,int8+kv-int8",
                   help="comma-separated; the first is the baseline for agreement and the percentage column")
    e.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="a UTF-8 text file (default: the shipped one)")
    e.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    e.add_argument("--stride", type=int, default=256, help="tokens the window moves by (default 256)")
    e.add_argument("--prompt-tokens", type=int, default=16, help="tokens of each paragraph used as a prompt")
    e.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt")
    e.add_argument("--json", type=Path, default=None, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.stride <= args.window:
        raise SystemExit("stride: must be in (0, window]")
    configs = [parse_config(c.strip()) for c in args.configs.split(",") if c.strip()]
    base = EngineArgs.from_cli_args(args)
    refuse_config_flags(base)
    if base.num_kv_blocks is None:  # the window (or all prompts at once) is all the cache ever holds
        prompts_blocks = 16 * -(-(args.prompt_tokens + args.max_tokens) // base.block_size)
        base = dataclasses.replace(base, num_kv_blocks=max(-(-args.window // base.block_size), prompts_blocks) + 1)
    text = args.text.read_text(encoding="utf-8")
    print(HEADER, flush=True)
    results = evaluate(base, configs, text, args.window, args.stride, args.prompt_tokens, args.max_tokens)
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    return 0
