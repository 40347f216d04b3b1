"""The soak test: a long bounded load on a real server, watching for leaks and slow decay.

    make soak                                   # 30 minutes on the default model (not part of CI)
    make soak ARGS="--duration 300"             # any duration, in seconds
    python scripts/soak.py --base-url http://127.0.0.1:8000 --pid 1234   # a server that is already running

Unless given `--base-url`, it starts `kvserve serve` (default model; `--model` for another) in a subprocess.
It first measures capacity: `--capacity-concurrency` streams back to back for `--capacity-seconds`, giving
completed requests per second. Then, for `--duration` seconds, requests arrive at `--load` (0.8) x that rate,
Poisson-distributed; every request is the same shape (a `--prompt-len`-token prompt of ids, `--output-len`
tokens, ignore_eos), so latencies stay comparable over the run. Every `--interval` (10 s) it samples the
server's RSS and open file descriptors, its KV-cache usage (/metrics) and the latency percentiles of the
requests that finished in the interval, and prints one line.

It fails (exit 1) on any failed request, on RSS growth over 5% from the end of warm-up (the first
`--warmup` seconds) to the end, or on p99 end-to-end latency more than 20% higher in the last `--window`
(5 minutes) than in the first window after warm-up. `--out FILE` writes every sample as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.client import send_request  # noqa: E402
from loadtest.config import Target  # noqa: E402
from loadtest.workload import RequestSpec  # noqa: E402


@dataclass
class Sample:
    t_s: float
    rss_mb: float | None
    open_fds: int | None
    kv_usage: float | None
    done: int
    failed: int
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    ttft_p99_s: float | None


@dataclass
class State:
    e2e: list[tuple[float, float]] = field(default_factory=list)  # (finish time, e2e latency)
    ttft: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    in_flight: int = 0


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def kv_usage(client: httpx.Client) -> float | None:
    try:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("kvserve:kv_cache_usage_perc{"):
                return float(line.rsplit(" ", 1)[1])
    except httpx.HTTPError:
        return None
    return None


async def one(http: httpx.AsyncClient, target: Target, model: str, spec: RequestSpec, state: State, t0: float) -> None:
    state.in_flight += 1
    try:
        rec = await send_request(http, target, model, spec, 0, t0, 0.0)
    finally:
        state.in_flight -= 1
    now = time.perf_counter() - t0
    if rec.ok:
        state.e2e.append((now, rec.e2el_s))
        state.ttft.append((now, rec.ttft_s))
    else:
        state.failures.append(f"{rec.failure}: {rec.error}")


async def capacity(target: Target, model: str, spec: RequestSpec, concurrency: int, seconds: float) -> float:
    """Completed requests per second with `concurrency` streams back to back."""
    state, t0 = State(), time.perf_counter()
    async with httpx.AsyncClient(timeout=target.timeout_s) as http:
        async def loop() -> None:
            while time.perf_counter() - t0 < seconds:
                await one(http, target, model, spec, state, t0)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    if state.failures:
        raise SystemExit(f"capacity run failed: {state.failures[:3]}")
    return len(state.e2e) / (time.perf_counter() - t0)


async def soak(args, target: Target, model: str, spec: RequestSpec, rate: float, proc) -> tuple[list[Sample], State]:
    state, samples = State(), []
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    tasks: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=target.timeout_s, limits=limits) as http:
        metrics = httpx.Client(base_url=target.root, headers=_auth(args), timeout=30)

        async def sampler() -> None:
            last = 0.0
            while True:
                await asyncio.sleep(args.interval)
                now = time.perf_counter() - t0
                e2e = [x for t, x in state.e2e if last < t <= now]
                ttft = [x for t, x in state.ttft if last < t <= now]
                mem = proc.memory_info().rss / 2**20 if proc is not None else None
                fds = proc.num_fds() if proc is not None else None
                s = Sample(round(now, 1), mem, fds, await asyncio.to_thread(kv_usage, metrics), len(e2e),
                           len(state.failures), percentile(e2e, 50), percentile(e2e, 99), percentile(ttft, 99))
                samples.append(s)
                print(f"t={s.t_s:7.1f}s rss={_f(s.rss_mb, '.0f')}MB fds={s.open_fds} kv={_f(s.kv_usage, '.3f')} "
                      f"done={s.done} failed={s.failed} in_flight={state.in_flight} e2e p50={_f(s.e2e_p50_s)} "
                      f"p99={_f(s.e2e_p99_s)} ttft p99={_f(s.ttft_p99_s)}", flush=True)
                last = now

        watcher = asyncio.ensure_future(sampler())
        next_send = 0.0
        while next_send < args.duration:
            await asyncio.sleep(max(0.0, next_send - (time.perf_counter() - t0)))
            task = asyncio.ensure_future(one(http, target, model, spec, state, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_send += rng.exponential(1 / rate)
        await asyncio.gather(*tasks)
        await asyncio.sleep(args.interval - (time.perf_counter() - t0) % args.interval + 0.1)
        watcher.cancel()
        metrics.close()
    return samples, state


def _f(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _auth(args) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def verdict(args, samples: list[Sample], state: State) -> list[str]:
    """The reasons the soak failed (empty: it passed)."""
    problems = []
    if state.failures:
        problems.append(f"{len(state.failures)} request(s) failed, e.g. {state.failures[0]}")
    rss = [(s.t_s, s.rss_mb) for s in samples if s.rss_mb is not None]
    after_warmup = [m for t, m in rss if t >= args.warmup]
    if len(after_warmup) >= 2:
        growth = after_warmup[-1] / after_warmup[0] - 1
        print(f"RSS: {after_warmup[0]:.0f} MB after warm-up -> {after_warmup[-1]:.0f} MB at the end ({growth:+.1%})")
        if growth > 0.05:
            problems.append(f"RSS grew {growth:.1%} after warm-up (limit 5%)")
    end = max(t for t, _ in state.e2e) if state.e2e else 0.0
    window = min(args.window, max((end - args.warmup) / 3, args.interval))
    first = [x for t, x in state.e2e if args.warmup <= t < args.warmup + window]
    last = [x for t, x in state.e2e if t >= end - window]
    if first and last:
        p_first, p_last = percentile(first, 99), percentile(last, 99)
        drift = p_last / p_first - 1
        print(f"p99 e2e latency: first {window:.0f} s after warm-up {p_first:.3f} s ({len(first)} requests), "
              f"last {window:.0f} s {p_last:.3f} s ({len(last)} requests): {drift:+.1%}")
        if drift > 0.20:
            problems.append(f"p99 latency rose {drift:.1%} from the first to the last window (limit 20%)")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 30 minutes)")
    p.add_argument("--base-url", default=None, help="a running server (default: start one)")
    p.add_argument("--pid", type=int, default=None, help="the running server's pid (for RSS and open files)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default=None, help="model for the server this starts (default: the default model)")
    p.add_argument("--server-args", default="", help="more flags for the server this starts")
    p.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity to offer")
    p.add_argument("--capacity-concurrency", type=int, default=8)
    p.add_argument("--capacity-seconds", type=float, default=60.0)
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before RSS and latency baselines")
    p.add_argument("--window", type=float, default=300.0, help="seconds compared at the start and the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the samples here (JSON)")
    args = p.parse_args(argv)

    import psutil

    server = None
    if args.base_url is None:
        from server.process import ServerProcess

        flags = ["--no-access-log", "--log-level", "warning", "--no-prefix-caching"] + args.server_args.split()
        if args.model:
            flags += ["--model", args.model]
        server = ServerProcess(*flags).start(timeout=600)
        args.base_url, args.pid = server.url, server.proc.pid
    proc = psutil.Process(args.pid) if args.pid else None
    try:
        target = Target(base_url=args.base_url, api_key=args.api_key, timeout_s=600)
        model = httpx.get(target.root + "/v1/models", headers=_auth(args), timeout=30).json()["data"][0]["id"]
        rng = np.random.default_rng(args.seed)
        spec = RequestSpec(tuple(int(t) for t in rng.integers(100, 10000, args.prompt_len)), args.output_len,
                           args.prompt_len)
        cap = asyncio.run(capacity(target, model, spec, args.capacity_concurrency, args.capacity_seconds))
        rate = args.load * cap
        print(f"capacity: {cap:.3f} requests/s with {args.capacity_concurrency} streams; offering {rate:.3f} "
              f"requests/s ({args.load:.0%}) for {args.duration:.0f} s", flush=True)
        samples, state = asyncio.run(soak(args, target, model, spec, rate, proc))
        done = len(state.e2e)
        print(f"requests: {done} completed, {len(state.failures)} failed; e2e p50 "
              f"{_f(percentile([x for _, x in state.e2e], 50))} s, p99 {_f(percentile([x for _, x in state.e2e], 99))} s")
        problems = verdict(args, samples, state)
        if args.out:
            Path(args.out).write_text(json.dumps({"capacity_rps": cap, "rate_rps": rate, "args": vars(args),
                                                  "samples": [asdict(s) for s in samples], "problems": problems},
                                                 indent=1))
    finally:
        if server is not None:
            server.stop()
    for problem in problems:
        print(f"SOAK FAILED: {problem}")
    if not problems:
        print("SOAK PASSED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
