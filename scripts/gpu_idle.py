"""GPU idle time per decode step, for any revision of the engine (CUDA only).

    python scripts/gpu_idle.py --model-config llama-3.2-1b --num-seqs 64 [--sync]
    PYTHONPATH=/path/to/other/checkout python scripts/gpu_idle.py ...   # the same probe, another revision

The probe (engine/tools/gpu_idle.py) is loaded from this script's own checkout by path, and `engine` is
imported from wherever PYTHONPATH points, so one script compares revisions (e.g. main before asynchronous
scheduling and the staged step, against this branch). Random weights (`load_format="dummy"`), bf16.
Prints one JSON line per measured mode.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path


def load_probe():
    path = Path(__file__).resolve().parents[1] / "engine" / "tools" / "gpu_idle.py"
    spec = importlib.util.spec_from_file_location("gpu_idle_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-config", default="llama-3.2-1b")
    ap.add_argument("--num-seqs", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--modes", default="async,sync", help="async,sync (a revision without the option runs once)")
    args = ap.parse_args()

    from engine import LLM
    from engine.config import EngineArgs

    probe = load_probe()
    has_async = "async_scheduling" in {f.name for f in dataclasses.fields(EngineArgs)}
    modes = args.modes.split(",") if has_async else ["default"]
    llm = LLM(model_config=args.model_config, load_format="dummy", device="cuda",
              max_model_len=args.max_model_len, max_num_seqs=max(args.num_seqs),
              max_num_batched_tokens=max(2048, args.prompt_len))
    engine = llm.engine
    for mode in modes:
        if mode != "default":
            engine.async_scheduling = mode == "async"
        for n in args.num_seqs:
            result = probe.measure_decode_idle(engine, num_seqs=n, prompt_len=args.prompt_len, num_steps=args.steps)
            print(json.dumps({"model": args.model_config, "mode": mode, "num_seqs": n,
                              **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
