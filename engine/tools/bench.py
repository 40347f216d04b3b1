"""`kvserve bench`: offline throughput on a seeded random-token workload, optionally side by side with
HF transformers (static batching with `generate`, and HF's own continuous batching) in the same process,
or side by side at several tensor-parallel sizes (`--compare-tp 1,2`: every engine loaded, rounds alternate),
or with and without speculative decoding (`--speculative-method ngram`, engine.tools.spec_bench; `--workload
repetitive` runs the shipped prompts whose answers repeat the prompt).

Every system gets the same prompts and the same per-request output lengths, with EOS ignored, so output
token counts are identical and tok/s compare directly. Static batching pads each batch and runs it to its
longest output; only the requested tokens count as output.

The engine's context window is the workload's (longest prompt + longest output, rounded up to 256) unless
--max-model-len says otherwise. Before timing, the engine runs a full-size warm-up batch (`EngineRun.warm_up`): as many requests as run at
once, one step of max_num_batched_tokens prefill tokens, then decode steps at that batch size, so that every
kernel variant and allocation the timed run needs exists before the clock starts. With --json, the engine's
figures are written as soon as they exist (HF runs after it and may fail or be cut short).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kernels.bench import write_json

from .step_summary import step_points, summarize

from ..config import EngineArgs
from .peaks import PeakArgs, peak_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    num_prompts: int
    input_len: str
    output_len: str
    seed: int
    prompts: list[list[int]]
    output_lens: list[int]

    def summary(self) -> dict:
        return {"num_prompts": self.num_prompts, "input_len": self.input_len, "output_len": self.output_len,
                "seed": self.seed, "prompt_tokens": sum(map(len, self.prompts)),
                "output_tokens": sum(self.output_lens), "ignore_eos": True}


def make_repetitive_workload(num_prompts: int, output_len: str, seed: int, tokenizer) -> Workload:
    """The shipped prompts whose answers repeat the prompt (engine.tools.spec_workload), cycled."""
    from .spec_workload import repetitive_prompts

    rng = np.random.default_rng(seed)
    olo, ohi = parse_len(output_len)
    shipped = repetitive_prompts(tokenizer)
    prompts = [shipped[i % len(shipped)] for i in range(num_prompts)]
    out_lens = rng.integers(olo, ohi + 1, size=num_prompts)
    return Workload(num_prompts, "repetitive", str(output_len), seed, prompts, [int(n) for n in out_lens])


def parse_len(spec: str) -> tuple[int, int]:
    """"128" -> (128, 128); "32:256" -> uniform over [32, 256]."""
    lo, _, hi = str(spec).partition(":")
    lo_i, hi_i = int(lo), int(hi or lo)
    if lo_i < 1 or hi_i < lo_i:
        raise ValueError(f"length: expected N or LO:HI with 1 <= LO <= HI, got {spec!r}")
    return lo_i, hi_i


def make_workload(num_prompts: int, input_len: str, output_len: str, seed: int, vocab_size: int) -> Workload:
    rng = np.random.default_rng(seed)
    (ilo, ihi), (olo, ohi) = parse_len(input_len), parse_len(output_len)
    in_lens = rng.integers(ilo, ihi + 1, size=num_prompts)
    out_lens = rng.integers(olo, ohi + 1, size=num_prompts)
    prompts = [rng.integers(0, vocab_size, size=int(n)).tolist() for n in in_lens]
    return Workload(num_prompts, str(input_len), str(output_len), seed, prompts, [int(n) for n in out_lens])


class EngineRun:
    """The engine under test, loaded once; `run(wl)` times one pass over the workload."""

    def __init__(self, args: EngineArgs):
        from ..llm import LLM
        from ..sampling_params import SamplingParams

        t0 = time.perf_counter()
        self.llm = LLM(**{k: v for k, v in asdict(args).items()})
        self.load_s = time.perf_counter() - t0
        self.llm.generate([[1, 2, 3]] * 2, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        self.warmup_s = 0.0
        self.runs = 0
        self.last_stats: list = []

    def warm_up(self, wl: Workload, decode_steps: int = 3) -> dict:
        """A full-size batch: min(num_prompts, max_num_seqs) requests whose prompts (prefixes of the workload's)
        fill one max_num_batched_tokens prefill step together, then `decode_steps` decode steps at that batch
        size. Returns its shape."""
        from ..sampling_params import SamplingParams

        sched = self.llm.engine.config.scheduler
        n = min(wl.num_prompts, sched.max_num_seqs)
        length = max(1, -(-sched.max_num_batched_tokens // n))
        prompts = [p[:length] for p in wl.prompts[:n]]
        _sync()
        t0 = time.perf_counter()
        self.llm.generate(prompts, SamplingParams(temperature=0, max_tokens=1 + decode_steps, ignore_eos=True))
        _sync()
        self.warmup_s = time.perf_counter() - t0
        return {"requests": n, "prompt_tokens": sum(map(len, prompts)), "decode_steps": decode_steps,
                "seconds": self.warmup_s}

    def run(self, wl: Workload, peak=None) -> dict:
        """One pass over the workload, every request added at once (their arrival), stepped to the end. Besides
        throughput: the time in prefill / decode / mixed steps with their FLOPs and bytes, and TTFT / TPOT."""
        from ..sampling_params import SamplingParams
        engine = self.llm.engine
        engine.kv.pool.reset_prefix_cache()  # a repeated round must not hit the previous round's prompts
        self.runs += 1
        _sync()
        t0, arrival = time.perf_counter(), time.time()
        for i, (prompt, n) in enumerate(zip(wl.prompts, wl.output_lens)):
            engine.add_request(f"bench-{self.runs}-{i}", prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                               arrival_time=arrival)
        stats, produced, ttft, tpot = [], 0, [], []
        while engine.has_unfinished_requests():
            out = engine.step()
            stats.append(out.stats)
            for d in out.deltas:
                produced += len(d.new_token_ids)
                if d.finished and d.times.first_token is not None:
                    ttft.append(d.times.first_token - d.times.arrival)
                    if d.num_output_tokens >= 2:
                        tpot.append((d.times.last_token - d.times.first_token) / (d.num_output_tokens - 1))
        _sync()
        dt = time.perf_counter() - t0
        assert produced == sum(wl.output_lens), "engine produced a different number of tokens than requested"
        self.last_stats = stats
        return {"seconds": dt, "output_tokens": produced, "output_tok_s": produced / dt, "load_s": self.load_s,
                "warmup_s": self.warmup_s,
                "num_kv_blocks": engine.kv.num_blocks, "device": str(engine.config.device),
                "dtype": str(engine.config.model.dtype).replace("torch.", ""),
                "attention_backend": engine.config.attention_backend,
                "steps": summarize(step_points(stats), peak),
                "ttft_s": _spread(ttft), "tpot_s": _spread(tpot)}


def _spread(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None}
    v = sorted(values)
    return {"count": len(v), "mean": sum(v) / len(v), "p50": statistics.median(v), "p90": v[min(len(v) - 1, int(0.9 * len(v)))]}


def _release_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_hf_model(engine_args: EngineArgs):
    """The same model for transformers: the same weights for a checkpoint, random weights for a shape."""
    from transformers import AutoModelForCausalLM

    cfg = engine_args.resolve()
    if cfg.model.path is None:
        with torch.device(cfg.device):
            model = AutoModelForCausalLM.from_config(cfg.model.hf_config, dtype=cfg.model.dtype, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=cfg.model.dtype, attn_implementation="sdpa")
        model.to(cfg.device)
    return model.eval(), cfg.device


@torch.inference_mode()
def run_hf_static(model, device, wl: Workload, batch_size: int) -> dict:
    """`generate` on padded batches of `batch_size` prompts (left padding), each run to its longest output."""
    pad = 0

    def run(prompts, out_lens):
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max(out_lens),
                       min_new_tokens=max(out_lens), do_sample=False, eos_token_id=None, pad_token_id=pad)

    run(wl.prompts[:2], [4, 4])  # warm-up
    _sync()
    t0 = time.perf_counter()
    for i in range(0, wl.num_prompts, batch_size):
        run(wl.prompts[i:i + batch_size], wl.output_lens[i:i + batch_size])
    _sync()
    dt = time.perf_counter() - t0
    produced = sum(wl.output_lens)
    return {"seconds": dt, "output_tokens": produced, "output_tok_s": produced / dt, "batch_size": batch_size}


@torch.inference_mode()
def run_hf_cb(model, wl: Workload) -> dict:
    """HF transformers' continuous batching (the manager behind `generate_batch`), per-request lengths."""
    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=max(wl.output_lens), eos_token_id=None, pad_token_id=0)
    t0 = time.perf_counter()
    with model.continuous_batching_context_manager(generation_config=gen, block=True, timeout=5,
                                                   **_hf_cb_cache_size(wl)) as manager:
        ids = [manager.add_request(p, max_new_tokens=n, eos_token_id=-1) for p, n in zip(wl.prompts, wl.output_lens)]
        done: dict = {}
        while len(done) < len(ids):
            r = manager.get_result(timeout=1)
            if r is not None and r.is_finished():
                done[r.request_id] = r
            elif r is None and not manager.is_running():
                raise RuntimeError("HF continuous batching stopped before finishing")
    _sync()
    dt = time.perf_counter() - t0
    produced = sum(len(done[i].generated_tokens) for i in ids)
    return {"seconds": dt, "output_tokens": produced, "output_tok_s": produced / dt}


def _hf_cb_cache_size(wl: Workload) -> dict:
    """A KV cache that holds every request of the workload at once, twice over. Left to itself, HF sizes its
    cache from free memory (0.8-0.9 of it), which on a CPU means most of the machine's RAM (12 GB for a tiny
    test model here); older transformers without the config keep their default."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        return {}
    page = 256
    pages = sum(-(-(len(p) + n) // page) for p, n in zip(wl.prompts, wl.output_lens))
    return {"continuous_batching_config": ContinuousBatchingConfig(page_size=page, num_blocks=2 * pages)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", default="32:256", help="N or LO:HI (uniform)")
    parser.add_argument("--output-len", default="16:128", help="N or LO:HI (uniform)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--workload", default="random", choices=("random", "repetitive"),
                        help="random token prompts, or the shipped prompts whose answers repeat the prompt "
                             "(engine/tools/spec_workload.py; --input-len is then unused)")
    parser.add_argument("--vs-hf", action="store_true", help="also run HF transformers on the same workload")
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--no-hf-cb", action="store_true", help="skip HF continuous batching")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate engine and HF static this many times and report medians (keeps both "
                             "loaded: on a GPU lower --gpu-memory-utilization to leave room for HF)")
    parser.add_argument("--compare-tp", default=None, metavar="N,M,...",
                        help="run the engine at each of these tensor-parallel sizes, alternating rounds, and "
                             "report throughput ratios to the first (instead of --tensor-parallel-size)")
    parser.add_argument("--no-idle-probe", action="store_true",
                        help="on CUDA, skip measuring GPU idle time per decode step (torch.profiler, ~20 steps "
                             "with and without asynchronous scheduling)")
    parser.add_argument("--json", default=None, help="write results as JSON to this path")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also sweep --sweep-batch-sizes and draw every step on the roofline into this PNG")
    parser.add_argument("--sweep-batch-sizes", default="1,4,16,64", help="concurrent prompts per sweep run (--plot)")
    parser.add_argument("--sweep-input-len", type=int, default=64, help="prompt tokens in the sweep (--plot)")
    parser.add_argument("--sweep-output-len", type=int, default=16, help="output tokens in the sweep (--plot)")
    parser.add_argument("--log-level", default="WARNING")
    EngineArgs.add_cli_args(parser)
    PeakArgs.add_cli_args(parser)


def _median_of(rounds: list[dict]) -> dict:
    """The round with the median throughput (its own seconds and tokens), plus every round's tok/s."""
    ordered = sorted(rounds, key=lambda r: r["output_tok_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_output_tok_s": [r["output_tok_s"] for r in rounds]}


def workload_max_model_len(wl: Workload, model_limit: int, granularity: int = 256) -> int:
    """The context window the workload needs (longest prompt + longest output), rounded up, within the
    model's: what the engine is sized for when --max-model-len is not given. The model's own window (131,072
    for Llama 3.1) would size CUDA graphs' block tables and split counts for contexts no request reaches."""
    need = max(map(len, wl.prompts)) + max(wl.output_lens)
    return min(model_limit, -(-need // granularity) * granularity)


def parse_tp_sizes(spec: str) -> list[int]:
    try:
        sizes = [int(x) for x in spec.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"compare_tp: expected distinct sizes >= 1 like 1,2, got {spec!r}")
    return sizes


def run_tp_comparison(args: argparse.Namespace, eargs: EngineArgs, wl: Workload, results: dict) -> dict:
    """The same workload at each tensor-parallel size; every engine stays loaded and the rounds alternate
    (size order rotating each round), so machine drift hits every size alike."""
    sizes = parse_tp_sizes(args.compare_tp)
    engines = {n: EngineRun(dataclasses.replace(eargs, tensor_parallel_size=n)) for n in sizes}
    for engine in engines.values():
        engine.warm_up(wl)
    rounds: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(args.rounds):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for n in order:
            rounds[n].append(engines[n].run(wl))
        print(f"round {r}: " + ", ".join(f"TP={n} {rounds[n][-1]['output_tok_s']:7.1f} output tok/s" for n in sizes),
              flush=True)
    for engine in engines.values():
        engine.llm.shutdown()
    base = sizes[0]
    ratios = {n: [a["output_tok_s"] / b["output_tok_s"] for a, b in zip(rounds[n], rounds[base])] for n in sizes}
    out = {}
    for n in sizes:
        med = _median_of(rounds[n])
        out[str(n)] = {**med, f"over_tp{base}": statistics.median(ratios[n]), f"over_tp{base}_rounds": ratios[n]}
        print(f"TP={n}: {med['output_tok_s']:8.1f} output tok/s (median of {args.rounds}; load {med['load_s']:.1f} s)"
              + ("" if n == base else f"   TP={n} / TP={base} = {statistics.median(ratios[n]):.2f}x"))
    results["tensor_parallel"] = out
    return results


def run(args: argparse.Namespace) -> int:
    eargs = EngineArgs.from_cli_args(args)
    model = eargs.resolve().model
    if args.workload == "repetitive":
        from transformers import AutoTokenizer

        wl = make_repetitive_workload(args.num_prompts, args.output_len, args.seed,
                                      AutoTokenizer.from_pretrained(model.tokenizer))
    else:
        wl = make_workload(args.num_prompts, args.input_len, args.output_len, args.seed, model.vocab_size)
    if eargs.max_model_len is None:
        eargs = dataclasses.replace(eargs, max_model_len=workload_max_model_len(wl, model.max_model_len))
    print(f"workload: {wl.num_prompts} prompts, input {wl.input_len}, output {wl.output_len}, seed {wl.seed}, "
          f"{wl.summary()['prompt_tokens']} prompt + {wl.summary()['output_tokens']} output tokens, ignore_eos; "
          f"max_model_len {eargs.max_model_len}")
    results: dict = {"workload": wl.summary(), "machine": _machine(), "rounds": args.rounds,
                     "max_model_len": eargs.max_model_len}
    if eargs.speculative_config is not None:  # always side by side with the same engine without it
        if args.vs_hf or args.compare_tp:
            raise SystemExit("kvserve bench: --speculative-method compares with and without speculation; "
                             "leave out --vs-hf and --compare-tp")
        from .spec_bench import run_spec_comparison

        run_spec_comparison(args, eargs, wl, results)
        write_json(args.json, results)
        return 0
    if args.compare_tp:
        if args.vs_hf:
            raise SystemExit("kvserve bench: --compare-tp and --vs-hf are separate comparisons; pick one")
        run_tp_comparison(args, eargs, wl, results)
        write_json(args.json, results)
        return 0
    engine = EngineRun(eargs)
    peak = _peak(args, engine, measure=args.plot is not None)
    results["warmup"] = engine.warm_up(wl)
    hf = None
    if args.vs_hf and args.rounds > 1:  # both stay loaded: rounds alternate, so machine drift hits both
        hf = load_hf_model(eargs)
    eng_rounds, st_rounds, ratios = [], [], []
    for r in range(args.rounds):
        eng_rounds.append(engine.run(wl, peak))
        line = f"round {r}: kvserve engine {eng_rounds[-1]['output_tok_s']:7.1f} output tok/s"
        if hf is not None:
            st_rounds.append(run_hf_static(*hf, wl, args.hf_batch_size))
            ratios.append(eng_rounds[-1]["output_tok_s"] / st_rounds[-1]["output_tok_s"])
            line += f", HF static {st_rounds[-1]['output_tok_s']:7.1f}, ratio {ratios[-1]:.2f}x"
        if args.rounds > 1:
            print(line, flush=True)
    eng = results["engine"] = _median_of(eng_rounds)
    print(f"kvserve engine        : {eng['output_tok_s']:8.1f} output tok/s ({eng['seconds']:.1f} s)", flush=True)
    _print_steps(eng)
    if engine.llm.engine.config.device.type == "cuda" and not args.no_idle_probe:
        results["gpu_idle"] = measure_gpu_idle(engine.llm.engine, min(wl.num_prompts, eargs.max_num_seqs))
    results.update(_flat(results, wl))
    write_json(args.json, results)  # the engine's figures survive an HF failure or timeout
    if args.plot:
        from .roofline_sweep import plot_roofline, sweep

        sizes = [int(b) for b in args.sweep_batch_sizes.split(",")]
        points = sweep(engine, sizes, args.sweep_input_len, args.sweep_output_len, args.seed, model.vocab_size)
        plot_roofline(points, peak, args.plot, title=f"{engine.llm.engine.model_config.name} on {_device_name(engine)}")
        results["roofline_sweep"] = {str(b): summarize(p, peak) for b, p in points.items()}
        print(f"roofline: {sum(map(len, points.values()))} steps of batch sizes {sizes} drawn into {args.plot}")
    if args.vs_hf:
        if hf is None:  # one round: free the engine first, HF may need the memory (a GPU's KV cache)
            del engine
            _release_memory()
            hf = load_hf_model(eargs)
            st_rounds.append(run_hf_static(*hf, wl, args.hf_batch_size))
            ratios.append(eng["output_tok_s"] / st_rounds[0]["output_tok_s"])
        st = results["hf_static"] = _median_of(st_rounds)
        results["engine_over_hf_static"] = statistics.median(ratios)
        results["engine_over_hf_static_rounds"] = ratios
        print(f"HF static (batch {args.hf_batch_size:3d}) : {st['output_tok_s']:8.1f} output tok/s ({st['seconds']:.1f} s)"
              f"   engine / HF static = {statistics.median(ratios):.2f}x" + (" (median of rounds)" if args.rounds > 1 else ""))
        if not args.no_hf_cb:
            try:
                cb = run_hf_cb(hf[0], wl)
            except Exception as e:  # HF's CB is young; a failure there must not hide our numbers
                logger.warning("HF continuous batching failed: %s", e)
                cb = {"error": repr(e)[:500]}
            results["hf_cb"] = cb
            if "output_tok_s" in cb:
                print(f"HF continuous batching: {cb['output_tok_s']:8.1f} output tok/s ({cb['seconds']:.1f} s)"
                      f"   engine / HF CB = {eng['output_tok_s'] / cb['output_tok_s']:.2f}x")
    results.update(_flat(results, wl))
    results["complete"] = True
    write_json(args.json, results)
    return 0


def _flat(results: dict, wl: Workload) -> dict:
    eng = results["engine"]
    return {"engine_output_tok_s": eng["output_tok_s"], "output_tokens": eng["output_tokens"],
            "workload": wl.summary(), "hf_static_output_tok_s": results.get("hf_static", {}).get("output_tok_s"),
            "hf_cb_output_tok_s": results.get("hf_cb", {}).get("output_tok_s")}


def _peak(args, engine: EngineRun, measure: bool):
    """The peak from the flags (or the device's preset / the CPU's calibration); for a plot on a CPU without
    one, measured now (a few seconds) so the roofline has a roof."""
    try:
        peak = peak_for(PeakArgs.from_cli_args(args), engine.llm.engine.config.device)
    except ValueError as e:
        raise SystemExit(f"kvserve bench: {e}")
    if peak is None and measure and engine.llm.engine.config.device.type == "cpu":
        from ..roofline import Peak
        from .peaks import measure_cpu

        flops, bandwidth = measure_cpu()
        peak = Peak(f"CPU, measured now ({torch.get_num_threads()} torch threads)", flops, bandwidth)
    return peak


def _print_steps(eng: dict) -> None:
    from .step_summary import format_summary

    for line in format_summary(eng["steps"]):
        print("  " + line)
    t, p = eng["ttft_s"], eng["tpot_s"]
    if t["count"]:
        print(f"  TTFT mean {t['mean']:.3f} s, p50 {t['p50']:.3f} s, p90 {t['p90']:.3f} s (all {t['count']} requests "
              f"arrive at once, so TTFT includes queueing);  TPOT mean {_ms(p['mean'])}, p50 {_ms(p['p50'])}, "
              f"p90 {_ms(p['p90'])}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def _device_name(engine: EngineRun) -> str:
    device = engine.llm.engine.config.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' * (threads > 1)})"
def measure_gpu_idle(engine, num_seqs: int) -> dict:
    """GPU idle time per decode step at batch `num_seqs`, with asynchronous scheduling on and off (the
    engine's own setting is restored)."""
    from .gpu_idle import measure_decode_idle

    own, out = engine.async_scheduling, {}
    try:
        for mode in ("async", "sync"):
            engine.async_scheduling = mode == "async"
            r = out[mode] = measure_decode_idle(engine, num_seqs=num_seqs)
            print(f"GPU idle per decode step, batch {num_seqs}, {mode:5s}: {r['idle_ms_per_step']:.3f} ms of "
                  f"{r['span_ms_per_step']:.3f} ms ({100 * r['idle_fraction']:.1f}%)", flush=True)
    finally:
        engine.async_scheduling = own
    return out


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
