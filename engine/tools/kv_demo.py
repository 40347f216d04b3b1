"""`kvserve demo kv-cache`: what the KV cache buys, measured in one run on this machine.

The same model and prompts, greedy, generated twice in one process:

- **with the paged KV cache**: the engine as it always runs (`LLMEngine.step`): one prefill, then each step
  computes one new token per sequence and reads the K/V of everything before it from the cache;
- **without a cache**: the engine's own model runner with the cache's job taken away. Every step sends every
  sequence as new (a `NewSeq` starting at position 0), so the runner recomputes the keys and values of the whole
  context, prompt and all tokens generated so far, before it samples the next token: what a transformer does
  with no cache. Same weights, kernels, sampler and greedy choices; the only difference is the recomputation.
  (HF transformers with use_cache=False would also compare another framework's code, so it is not used.)

It reports the time per output token against its position (flat with the cache, growing linearly without:
the n-th token recomputes n + prompt tokens), the total speed-up for a few output lengths, the model FLOPs
of both (engine.roofline, the formulas `kvserve plan` prints), the memory the cache holds, and whether both
produced the same tokens (they must).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ..config import EngineArgs
from ..roofline import Share, step_cost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=["kv-cache"], help="the demonstration to run")
    parser.add_argument("--num-prompts", type=int, default=1, help="sequences generated together (default 1)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (random, seeded)")
    parser.add_argument("--output-len", type=int, default=256, help="output tokens per sequence")
    parser.add_argument("--lengths", default="16,32,64,128,256", help="output lengths to report the speed-up at")
    parser.add_argument("--plot", default=None, metavar="PNG", help="time per output token vs position, both ways")
    parser.add_argument("--json", default=None, help="write the results as JSON to this path")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed")
    parser.add_argument("--log-level", default="WARNING")
    EngineArgs.add_cli_args(parser)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_cached(engine, prompts: list[list[int]], output_len: int) -> tuple[list[float], list[list[int]], int]:
    """Per output position, the wall time of the step(s) that produced it; the tokens; the most KV blocks held."""
    from ..sampling_params import SamplingParams

    engine.kv.pool.reset_prefix_cache()  # no help from an earlier run's prompts
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"kv-demo-{i}", p, params)
    times = [0.0] * output_len
    tokens: list[list[int]] = [[] for _ in prompts]
    pending, most_blocks = 0.0, 0
    while engine.has_unfinished_requests():
        _sync()
        t0 = time.perf_counter()
        out = engine.step()
        _sync()
        pending += time.perf_counter() - t0
        most_blocks = max(most_blocks, out.stats.kv_blocks_used)
        positions = set()
        for d in out.deltas:
            if d.new_token_ids:
                tokens[int(d.request_id.rsplit("-", 1)[1])].extend(d.new_token_ids)
                positions.add(d.num_output_tokens - 1)
        if positions:  # a prefill chunk that samples nothing adds its time to the next position produced
            times[max(positions)] += pending
            pending = 0.0
    return times, tokens, most_blocks


def run_recompute(engine, prompts: list[list[int]], output_len: int) -> tuple[list[float], list[list[int]]]:
    """The cache-less baseline: each step recomputes every sequence from position 0 (see the module docstring)."""
    from ..step import NewSeq, SamplingOptions, SchedulerOutput

    runner, pool, bs = engine.runner, engine.kv.pool, engine.kv.block_size
    engine.kv.pool.reset_prefix_cache()
    tables = [pool.get_new_blocks(-(-(len(p) + output_len) // bs)) for p in prompts]  # scratch room for one step
    greedy = SamplingOptions(temperature=0.0)
    tokens = [list(p) for p in prompts]
    times, previous = [], ()
    try:
        for step in range(output_len):
            ids = tuple(f"no-kv-{step}-{i}" for i in range(len(prompts)))
            seqs = tuple(NewSeq(rid, tuple(t), len(p), tuple(b.block_id for b in table), 0, len(t), True, greedy)
                         for rid, t, p, table in zip(ids, tokens, prompts, tables))
            n = sum(len(t) for t in tokens)
            _sync()
            t0 = time.perf_counter()
            result = runner.execute(SchedulerOutput(seqs, previous, (), n, n, 0, 0))
            _sync()
            times.append(time.perf_counter() - t0)
            for t, new in zip(tokens, result.token_ids):
                t.extend(new)
            previous = ids  # the runner forgets them next step: nothing carries over
        runner.execute(SchedulerOutput((), previous, (), 0, 0, 0, 0))
    finally:
        for table in tables:
            pool.free_blocks(table)
    return times, [t[len(p):] for t, p in zip(tokens, prompts)]


def model_flops(cost_model, prompt_len: int, output_len: int, num: int) -> tuple[float, float]:
    """(with the cache, without it): the model FLOPs of generating `output_len` tokens for `num` sequences."""
    cached = step_cost(cost_model, [Share(0, prompt_len, True, False, count=num)]).flops
    cached += sum(step_cost(cost_model, [Share(prompt_len + k - 1, 1, True, True, count=num)]).flops
                  for k in range(1, output_len))
    recompute = sum(step_cost(cost_model, [Share(0, prompt_len + k, True, False, count=num)]).flops
                    for k in range(output_len))
    return cached, recompute


def plot(cached: list[float], recompute: list[float], path: str, title: str) -> None:
    """Left: time per output token against its position (raw, and a running median of 9 against noise);
    right: the total time to generate n tokens (linear with the cache, quadratic without)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.arange(1, len(cached) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=130, gridspec_kw={"width_ratios": [1.35, 1]})
    for times, colour, label in ((recompute, "#e07b39", "no KV cache: recompute the whole context"),
                                 (cached, "#2a9d8f", "paged KV cache")):
        ms = np.array(times) * 1e3
        left.plot(pos, ms, color=colour, lw=0.8, alpha=0.35)
        left.plot(pos, _running_median(ms, 9), color=colour, lw=2, label=label)
        right.plot(pos, np.cumsum(times), color=colour, lw=2, label=label)
    left.set_xlabel("output token position")
    left.set_ylabel("time for this token (ms)")
    left.set_title("time per token (thin: each token; thick: running median of 9)", fontsize=9)
    right.set_xlabel("output tokens generated")
    right.set_ylabel("total time (s)")
    right.set_title("total time", fontsize=9)
    for ax in (left, right):
        ax.set_xlim(1, len(cached))
        ax.set_ylim(0, None)
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    return np.array([np.median(values[max(0, i - half):i + half + 1]) for i in range(len(values))])


def run(args: argparse.Namespace) -> int:
    from ..llm import LLM

    if args.num_prompts < 1 or args.prompt_len < 1 or args.output_len < 2:
        raise SystemExit("kvserve demo: --num-prompts and --prompt-len must be >= 1, --output-len >= 2")
    eargs = EngineArgs.from_cli_args(args)
    llm = LLM(**{k: v for k, v in vars(eargs).items()})
    engine = llm.engine
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(3, engine.model_config.vocab_size, size=args.prompt_len).tolist() for _ in range(args.num_prompts)]
    run_cached(engine, [p[:8] for p in prompts], 4)  # warm-up of both paths
    run_recompute(engine, [p[:8] for p in prompts], 4)

    cached_t, cached_tok, blocks = run_cached(engine, prompts, args.output_len)
    recompute_t, recompute_tok = run_recompute(engine, prompts, args.output_len)
    same = cached_tok == recompute_tok
    mc = engine.model_config
    kv_token = mc.kv_bytes_per_token
    kv_bytes = blocks * engine.kv.block_size * kv_token
    flops_cached, flops_recompute = model_flops(engine.cost_model, args.prompt_len, args.output_len, args.num_prompts)
    lengths = [n for n in (int(x) for x in args.lengths.split(",")) if 1 <= n <= args.output_len]
    speedups = {n: {"cached_s": sum(cached_t[:n]), "recompute_s": sum(recompute_t[:n]),
                    "speedup": sum(recompute_t[:n]) / sum(cached_t[:n])} for n in lengths}
    device = engine.config.device
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} thread{'s' * (threads > 1)}"
    print(f"KV cache demo: {mc.name} ({str(mc.dtype).replace('torch.', '')}, {where}), {args.num_prompts} x "
          f"{args.prompt_len}-token prompt(s), {args.output_len} output tokens, greedy")
    print(f"  same tokens with and without the cache: {same}")
    print("  output length   with cache   without    speed-up")
    for n, s in speedups.items():
        print(f"  {n:13d}   {s['cached_s']:9.2f} s {s['recompute_s']:9.2f} s   {s['speedup']:7.2f}x")
    tail = max(1, args.output_len // 8)
    print(f"  time per token: with the cache {np.median(cached_t[1:]) * 1e3:.1f} ms (median after the first); without, "
          f"{np.mean(recompute_t[:tail]) * 1e3:.1f} ms over the first {tail} -> {np.mean(recompute_t[-tail:]) * 1e3:.1f} ms "
          f"over the last {tail}")
    print(f"  model FLOPs: {flops_cached / 1e9:,.1f} G with the cache, {flops_recompute / 1e9:,.1f} G without "
          f"({flops_recompute / flops_cached:.1f}x the work)")
    print(f"  the cache's memory: {blocks} blocks x {engine.kv.block_size} tokens x {kv_token:,} B/token = "
          f"{kv_bytes / 2**20:,.1f} MiB at most in this run ({kv_token:,} B per token = 2 x {mc.num_layers} layers x "
          f"{mc.num_kv_heads} KV heads x {mc.head_dim} x {kv_token // (2 * mc.num_layers * mc.num_kv_heads * mc.head_dim)} B);"
          f" weights: {engine.cost_model.weight_bytes / 2**20:,.1f} MiB")
    if args.plot:
        plot(cached_t, recompute_t, args.plot,
             f"{mc.name} on {where}: {args.num_prompts} x {args.prompt_len}-token prompt, greedy; "
             f"{args.output_len} tokens: {speedups[lengths[-1]]['speedup']:.1f}x faster with the cache" if lengths else "")
        print(f"  plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": mc.name, "device": where, "num_prompts": args.num_prompts, "prompt_len": args.prompt_len,
                       "output_len": args.output_len, "same_tokens": same, "speedup": speedups,
                       "cached_step_s": cached_t, "recompute_step_s": recompute_t, "kv_blocks": blocks,
                       "kv_bytes": kv_bytes, "kv_bytes_per_token": kv_token,
                       "model_flops": {"cached": flops_cached, "recompute": flops_recompute}}, f, indent=2)
    return 0 if same else 1
