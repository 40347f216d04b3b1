"""`kvserve bench`: offline throughput on a seeded random-token workload, optionally side by side with
HF transformers (static batching with `generate`, and HF's own continuous batching) in the same process.

Every system gets the same prompts and the same per-request output lengths, with EOS ignored, so output
token counts are identical and tok/s compare directly. Static batching pads each batch and runs it to its
longest output; only the requested tokens count as output.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..config import EngineArgs

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
        self.llm.generate([[1, 2, 3]] * 2, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up

    def run(self, wl: Workload) -> dict:
        from ..sampling_params import SamplingParams

        engine = self.llm.engine
        engine.kv.pool.reset_prefix_cache()  # a repeated round must not hit the previous round's prompts
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in wl.output_lens]
        _sync()
        t0 = time.perf_counter()
        outs = self.llm.generate(wl.prompts, params)
        _sync()
        dt = time.perf_counter() - t0
        produced = sum(len(o.token_ids) for o in outs)
        assert produced == sum(wl.output_lens), "engine produced a different number of tokens than requested"
        return {"seconds": dt, "output_tokens": produced, "output_tok_s": produced / dt, "load_s": self.load_s,
                "num_kv_blocks": engine.kv.num_blocks, "device": str(engine.config.device),
                "dtype": str(engine.config.model.dtype).replace("torch.", ""),
                "attention_backend": engine.config.attention_backend}


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
    with model.continuous_batching_context_manager(generation_config=gen, block=True, timeout=5) as manager:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", default="32:256", help="N or LO:HI (uniform)")
    parser.add_argument("--output-len", default="16:128", help="N or LO:HI (uniform)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--vs-hf", action="store_true", help="also run HF transformers on the same workload")
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--no-hf-cb", action="store_true", help="skip HF continuous batching")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate engine and HF static this many times and report medians (keeps both "
                             "loaded: on a GPU lower --gpu-memory-utilization to leave room for HF)")
    parser.add_argument("--no-idle-probe", action="store_true",
                        help="on CUDA, skip measuring GPU idle time per decode step (torch.profiler, ~20 steps "
                             "with and without asynchronous scheduling)")
    parser.add_argument("--json", default=None, help="write results as JSON to this path")
    parser.add_argument("--log-level", default="WARNING")
    EngineArgs.add_cli_args(parser)


def _median_of(rounds: list[dict]) -> dict:
    """The round with the median throughput (its own seconds and tokens), plus every round's tok/s."""
    ordered = sorted(rounds, key=lambda r: r["output_tok_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_output_tok_s": [r["output_tok_s"] for r in rounds]}


def run(args: argparse.Namespace) -> int:
    eargs = EngineArgs.from_cli_args(args)
    vocab = eargs.resolve().model.vocab_size
    wl = make_workload(args.num_prompts, args.input_len, args.output_len, args.seed, vocab)
    print(f"workload: {wl.num_prompts} prompts, input {wl.input_len}, output {wl.output_len}, seed {wl.seed}, "
          f"{wl.summary()['prompt_tokens']} prompt + {wl.summary()['output_tokens']} output tokens, ignore_eos")
    results: dict = {"workload": wl.summary(), "machine": _machine(), "rounds": args.rounds}
    engine = EngineRun(eargs)
    hf = None
    if args.vs_hf and args.rounds > 1:  # both stay loaded: rounds alternate, so machine drift hits both
        hf = load_hf_model(eargs)
    eng_rounds, st_rounds, ratios = [], [], []
    for r in range(args.rounds):
        eng_rounds.append(engine.run(wl))
        line = f"round {r}: kvserve engine {eng_rounds[-1]['output_tok_s']:7.1f} output tok/s"
        if hf is not None:
            st_rounds.append(run_hf_static(*hf, wl, args.hf_batch_size))
            ratios.append(eng_rounds[-1]["output_tok_s"] / st_rounds[-1]["output_tok_s"])
            line += f", HF static {st_rounds[-1]['output_tok_s']:7.1f}, ratio {ratios[-1]:.2f}x"
        if args.rounds > 1:
            print(line, flush=True)
    eng = results["engine"] = _median_of(eng_rounds)
    print(f"kvserve engine        : {eng['output_tok_s']:8.1f} output tok/s ({eng['seconds']:.1f} s)")
    if engine.llm.engine.config.device.type == "cuda" and not args.no_idle_probe:
        results["gpu_idle"] = measure_gpu_idle(engine.llm.engine, min(wl.num_prompts, eargs.max_num_seqs))
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
    flat = {"engine_output_tok_s": eng["output_tok_s"], "output_tokens": eng["output_tokens"], "workload": wl.summary(),
            "hf_static_output_tok_s": results.get("hf_static", {}).get("output_tok_s"),
            "hf_cb_output_tok_s": results.get("hf_cb", {}).get("output_tok_s")}
    results.update(flat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


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
