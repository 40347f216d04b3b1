"""Throughput with a competing CPU-bound process: how gracefully each thread/OpenMP setting degrades.

    make bench-busy-core                                     # the default model, every setting, 3 rounds
    python -m engine.tools.busy_core_bench --rounds 5 --hogs 1 --settings default spin one-thread

Each setting runs in a worker process of its own (OpenMP reads its environment once, at load), which loads
the model, warms up and then, on command, runs one offline batch (`--prompts` prompts x `--max-tokens`
tokens, greedy, ignore_eos) and reports output tok/s. Rounds alternate quiet and busy runs of every setting;
busy means `--hogs` processes spinning `while True: pass` for the run's duration. The result per setting is
the median quiet and busy figure and their ratio (the goal: busy >= 0.5 x quiet).

Settings: `default` is what `kvserve` does now (OMP_WAIT_POLICY=PASSIVE, torch's thread count); `spin` is the
OpenMP runtime's own default (active waiting); `one-thread` is `--cpu-threads 1`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SETTINGS: dict[str, tuple[dict[str, str], int | None]] = {
    "default": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, None),
    "one-thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1),
}
HOG = "while True: pass"


def worker(model: str | None, threads: int | None, prompts: int, max_tokens: int) -> None:
    from engine import LLM, SamplingParams

    llm = LLM(model, cpu_threads=threads, enable_prefix_caching=False)
    texts = [f"Request {i}: tell me a long story about the sea and a lighthouse keeper." for i in range(prompts)]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(texts[:2], SamplingParams(temperature=0, max_tokens=4))
    import torch

    print(f"ready threads={torch.get_num_threads()}", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        outs = llm.generate(texts, params)
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        print(f"tok/s {n / (time.perf_counter() - t0):.3f}", flush=True)


class Worker:
    def __init__(self, name: str, args: argparse.Namespace):
        env_overrides, threads = SETTINGS[name]
        env = dict(os.environ, **env_overrides)
        env.pop("GOMP_SPINCOUNT", None)
        cmd = [sys.executable, "-m", "engine.tools.busy_core_bench", "--worker", "--prompts", str(args.prompts),
               "--max-tokens", str(args.max_tokens)] + (["--model", args.model] if args.model else [])
        if threads is not None:
            cmd += ["--threads", str(threads)]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self._line("ready")
        self.threads = line.split("threads=")[1]

    def _line(self, prefix: str) -> str:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} exited")
            if line.startswith(prefix):
                return line.strip()

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self._line("tok/s").split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the default model)")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hogs", type=int, default=1, help="competing CPU-bound processes while busy")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.model, args.threads, args.prompts, args.max_tokens)
        return 0
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; workload: {args.prompts} prompts x "
          f"{args.max_tokens} tokens, {args.hogs} competing process(es) when busy", flush=True)
    workers = [Worker(name, args) for name in args.settings]
    quiet: dict[str, list[float]] = {w.name: [] for w in workers}
    busy: dict[str, list[float]] = {w.name: [] for w in workers}
    try:
        for r in range(args.rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            for w in order:
                quiet[w.name].append(w.run())
                hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
                try:
                    time.sleep(0.5)
                    busy[w.name].append(w.run())
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
                print(f"round {r}: {w.name:10s} quiet {quiet[w.name][-1]:7.1f} tok/s, busy {busy[w.name][-1]:7.1f} "
                      f"tok/s", flush=True)
    finally:
        for w in workers:
            w.close()
    print(f"{'setting':12s} {'threads':>7s} {'quiet tok/s':>12s} {'busy tok/s':>11s} {'busy/quiet':>10s}")
    for w in workers:
        q, b = statistics.median(quiet[w.name]), statistics.median(busy[w.name])
        print(f"{w.name:12s} {w.threads:>7s} {q:12.1f} {b:11.1f} {b / q:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
