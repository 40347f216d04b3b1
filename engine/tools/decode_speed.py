"""`kvserve speed`: decode speed of several weight / KV-cache configurations in one process, side by side.

For each configuration (the names `kvserve eval-ppl` takes: `base`, `int8`, `int4`, `kv-int8`, `int8+kv-int8`,
`int4+fphead`, ...) one engine is built; then, round after round, each engine decodes the same random
prompts at every stream count asked for. Reported per configuration and stream count (medians over rounds):

    one stream    time per output token (TPOT, the median decode step) and time to first token
    N streams     output tokens per second (N x output tokens over the wall time of the whole run)

and each one's ratio to the first configuration. `--profile` adds where a one-stream decode step's time
goes, from torch.profiler: the weight matmuls, attention, the other tensor ops, kvserve's C kernels (timed
around their calls: the one-call decode step and the int8 / w8a8 products, which are not torch ops), and what
is left outside (Python: scheduler, batch building, sampling glue). The profiler slows small ops down, so its
split is a guide to the proportions, not a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import EngineArgs
from .eval_ppl import parse_config, refuse_config_flags

WEIGHT_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm",
                  "aten::_weight_int4pack_mm_for_cpu", "aten::_scaled_mm")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


@dataclass(frozen=True)
class SpeedResult:
    config: str
    streams: int
    tpot_ms: float  # median decode step (one stream) or wall / output tokens per stream (N streams)
    ttft_ms: float
    output_tok_s: float
    tpot_cpu_ms: float  # the same from this thread's CPU time: what a busy shared machine cannot inflate
    # (with --cpu-threads 1 every tensor op runs on this thread; with more it undercounts the helper threads)


@dataclass(frozen=True)
class StepProfile:
    config: str
    step_ms: float
    step_cpu_ms: float  # this thread's CPU time per step: step_ms minus the time the machine ran others
    matmul_ms: float
    attention_ms: float
    other_ops_ms: float
    outside_ops_ms: float
    c_kernels_ms: float = 0.0  # kvserve's C calls (the one-call decode step, the int8 / w8a8 products): no torch ops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    EngineArgs.add_cli_args(parser)
    s = parser.add_argument_group("speed")
    s.add_argument("--configs", default="base,int8,int4",
                   help="comma-separated (eval-ppl's names); the first is the baseline of the ratios")
    s.add_argument("--streams", default="1,32", help="comma-separated concurrent stream counts")
    s.add_argument("--input-len", type=int, default=32)
    s.add_argument("--output-len", type=int, default=64)
    s.add_argument("--rounds", type=int, default=3, help="alternate the configurations this many times")
    s.add_argument("--profile", action="store_true", help="also split a one-stream decode step (torch.profiler)")
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--log-level", default="WARNING")


def prompts(vocab: int, streams: int, input_len: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 1, (streams, input_len), generator=g).tolist()


def run_once(llm, token_prompts: list[list[int]], output_len: int) -> tuple[float, float, float, float, float]:
    """(median decode step, first step, whole run, median decode step's thread CPU time, whole run's thread
    CPU time), in seconds, for these prompts decoded together."""
    from ..sampling_params import SamplingParams

    engine = llm.engine
    sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    for i, p in enumerate(token_prompts):
        engine.add_request(f"speed-{time.monotonic_ns()}-{i}", p, sp)
    steps, cpus = [], []
    start, cpu_start = time.perf_counter(), time.thread_time()
    while engine.has_unfinished_requests():
        t, c = time.perf_counter(), time.thread_time()
        engine.step()
        steps.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - c)
    total, cpu_total = time.perf_counter() - start, time.thread_time() - cpu_start
    return statistics.median(steps[1:] or steps), steps[0], total, statistics.median(cpus[1:] or cpus), cpu_total


def profile_step(llm, config: str, input_len: int, output_len: int) -> StepProfile:
    from torch.profiler import ProfilerActivity, profile

    from ..sampling_params import SamplingParams

    engine = llm.engine
    vocab = llm.engine.runner.config.model.vocab_size
    engine.add_request(f"speed-profile-{time.monotonic_ns()}", prompts(vocab, 1, input_len)[0],
                       SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True))
    engine.step()  # prefill, outside the profile
    n, start, cpu_start = 0, time.perf_counter(), time.thread_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof, _timed_c_kernels(engine.runner) as c_seconds:
        while engine.has_unfinished_requests():
            engine.step()
            n += 1
    wall, cpu = (time.perf_counter() - start) / n * 1e3, (time.thread_time() - cpu_start) / n * 1e3
    buckets = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        key = "matmul" if ev.key in WEIGHT_MATMULS else "attention" if ev.key in ATTENTION else "other"
        buckets[key] += ev.self_cpu_time_total / 1e3 / n
    c_ms = c_seconds[0] / n * 1e3
    inside = sum(buckets.values()) + c_ms
    return StepProfile(config, wall, cpu, buckets["matmul"], buckets["attention"], buckets["other"],
                       max(wall - inside, 0.0), c_ms)


@contextlib.contextmanager
def _timed_c_kernels(runner):
    """Time kvserve's C calls (ctypes, invisible to torch.profiler) while the block runs: yields a one-item list
    that ends up holding their seconds. The runner's kernel object is wrapped and restored afterwards."""
    total = [0.0]
    kernel = getattr(runner, "cpu_kernel", None)
    names = ("int8_linear", "w8a8_linear", "llama_decode")

    def timed(fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - t
        return call

    if kernel is not None:
        for name in names:
            setattr(kernel, name, timed(getattr(kernel, name)))
    try:
        yield total
    finally:
        if kernel is not None:
            for name in names:
                delattr(kernel, name)  # the instance attribute goes; the method shows through again


def run(args: argparse.Namespace) -> int:
    configs = [parse_config(c.strip()) for c in args.configs.split(",") if c.strip()]
    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    base = dataclasses.replace(EngineArgs.from_cli_args(args), max_num_seqs=max(streams + [1]))
    refuse_config_flags(base)
    if base.num_kv_blocks is None:  # every engine stays loaded: give each the cache its longest run needs, not 2 GiB
        per_seq = -(-(args.input_len + args.output_len + 1) // base.block_size)
        base = dataclasses.replace(base, num_kv_blocks=max(streams + [1]) * per_seq + 1)
    llms = {cfg.name: cfg.build(base) for cfg in configs}
    vocab = next(iter(llms.values())).engine.runner.config.model.vocab_size
    samples: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    for name, llm in llms.items():  # warm-up: one short run each, untimed
        run_once(llm, prompts(vocab, 1, args.input_len), 4)
    for _ in range(args.rounds):
        for n in streams:
            for name, llm in llms.items():
                samples.setdefault((name, n), []).append(run_once(llm, prompts(vocab, n, args.input_len),
                                                                  args.output_len))
    results = []
    for (name, n), runs in samples.items():
        step, first, total, step_cpu, total_cpu = (statistics.median(x) for x in zip(*runs))
        tpot, tpot_cpu = (step, step_cpu) if n == 1 else (total / args.output_len, total_cpu / args.output_len)
        results.append(SpeedResult(name, n, tpot * 1e3, first * 1e3, n * args.output_len / total, tpot_cpu * 1e3))
    print(format_table(results, configs[0].name))
    profiles = [profile_step(llm, name, args.input_len, args.output_len) for name, llm in llms.items()] \
        if args.profile else []
    if profiles:
        print(format_profiles(profiles))
    if args.json is not None:
        args.json.write_text(json.dumps({"results": [dataclasses.asdict(r) for r in results],
                                         "profiles": [dataclasses.asdict(p) for p in profiles]}, indent=2))
    for llm in llms.values():
        llm.shutdown()
    return 0


def format_table(results: list[SpeedResult], baseline: str) -> str:
    base = {r.streams: r for r in results if r.config == baseline}
    lines = [f"{'config':<18} {'streams':>7} {'TPOT ms':>9} {'TTFT ms':>9} {'out tok/s':>10} {'x base':>7} "
             f"{'TPOT cpu ms':>12} {'x base':>7}"]
    for r in sorted(results, key=lambda r: (r.streams, [x.config for x in results].index(r.config))):
        b = base.get(r.streams)
        ratio = r.output_tok_s / b.output_tok_s if b else float("nan")
        cpu_ratio = b.tpot_cpu_ms / r.tpot_cpu_ms if b and r.tpot_cpu_ms else float("nan")
        lines.append(f"{r.config:<18} {r.streams:>7} {r.tpot_ms:>9.1f} {r.ttft_ms:>9.1f} {r.output_tok_s:>10.1f} "
                     f"{ratio:>6.2f}x {r.tpot_cpu_ms:>12.1f} {cpu_ratio:>6.2f}x")
    return "\n".join(lines)


def format_profiles(profiles: list[StepProfile]) -> str:
    lines = ["one-stream decode step under torch.profiler (ms per step, wall clock; the profiler inflates small ops, "
             "and on a busy machine 'outside ops' also holds the time other processes ran: compare 'step cpu')",
             f"{'config':<18} {'step':>7} {'step cpu':>9} {'matmuls':>8} {'attention':>10} {'other ops':>10} "
             f"{'C kernels':>10} {'outside ops':>12}"]
    for p in profiles:
        lines.append(f"{p.config:<18} {p.step_ms:>7.1f} {p.step_cpu_ms:>9.1f} {p.matmul_ms:>8.1f} "
                     f"{p.attention_ms:>10.1f} {p.other_ops_ms:>10.1f} {p.c_kernels_ms:>10.1f} {p.outside_ops_ms:>12.1f}")
    return "\n".join(lines)
