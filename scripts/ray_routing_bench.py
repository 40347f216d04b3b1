"""Ray Serve routing for kvserve replicas: prefix-cache affinity vs power of two choices, side by side.

    python scripts/ray_routing_bench.py                       # 2 rounds x 2 routers, ~10 min on 2 cores
    python scripts/ray_routing_bench.py --rounds 3 --out docs/results/ray-routing.json

Each run starts a fresh `kvserve serve --replicas 2 --router R` (cold prefix caches) on a local Ray instance
inside a private network namespace (scripts/netns_run.py), sends the same shared-prefix workload from
`kvserve loadtest` through Serve's proxy, and reads the prefix-cache hit rate from the merged /metrics of
both replicas (hits / lookups, in prompt tokens, over the run). Routers alternate within a round (A B, then
B A) so that a slow patch of a shared machine hurts both; the summary is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routers", default="prefix-affinity,pow2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--groups", type=int, default=16, help="shared-prefix groups")
    p.add_argument("--prefix-len", type=int, default=256)
    p.add_argument("--input-len", default="32", help="suffix tokens after the shared prefix")
    p.add_argument("--output-len", default="16")
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--serve-args", default="--cpu-kv-cache-gb 0.5 --max-model-len 1024",
                   help="extra `kvserve serve` flags for every run")
    p.add_argument("--out", type=Path, default=None, help="write every run and the summary as JSON")
    return p.parse_args(argv)


def one_run(args, router: str) -> dict:
    from loadtest.config import LoadConfig, LoadShape, Target, WorkloadConfig
    from loadtest.lengths import LengthSpec
    from loadtest.metrics_scrape import MetricsSnapshot
    from loadtest.runner import run_load_sync
    from server.process import ServerProcess

    import httpx

    proc = ServerProcess("--replicas", str(args.replicas), "--router", router, *args.serve_args.split())
    try:
        proc.start(timeout=900)
        config = LoadConfig(
            target=Target(base_url=proc.url, timeout_s=600),
            workload=WorkloadConfig(num_requests=args.num_requests, input_len=LengthSpec.parse(args.input_len),
                                    output_len=LengthSpec.parse(args.output_len), prefix_groups=args.groups,
                                    prefix_len=args.prefix_len),
            shape=LoadShape(max_concurrency=args.max_concurrency),
        )
        result = run_load_sync(config)
        merged = MetricsSnapshot.parse(httpx.get(proc.url + "/metrics", timeout=30).text)
    finally:
        proc.stop(timeout=120)
    s, m = result.stats, result.server_metrics
    per_replica = merged.by_label("kvserve:request_success_total", "replica")
    return {"router": router, "completed": s.completed, "failed": s.failed, "duration_s": s.duration_s,
            "output_tok_s": s.output_throughput, "total_tok_s": s.total_token_throughput,
            "prefix_cache_hit_rate": m.prefix_cache_hit_rate if m else None,
            "prefix_cache_hits": m.prefix_cache_hits if m else None,
            "prefix_cache_queries": m.prefix_cache_queries if m else None,
            "requests_per_replica": sorted(per_replica.values(), reverse=True),
            "errors": sorted({f"{r.status_code}: {r.error}"[:200] for r in result.records if not r.ok})}


def inside(args) -> int:
    routers = args.routers.split(",")
    runs = []
    for r in range(args.rounds):
        for router in (routers if r % 2 == 0 else routers[::-1]):
            run = one_run(args, router)
            run["round"] = r
            runs.append(run)
            print(json.dumps(run), flush=True)
    summary = {}
    for router in routers:
        mine = [x for x in runs if x["router"] == router]
        summary[router] = {k: statistics.median(x[k] for x in mine)
                           for k in ("output_tok_s", "total_tok_s", "prefix_cache_hit_rate", "duration_s")}
        summary[router]["failed"] = sum(x["failed"] for x in mine)
    print("\nrouter            hit rate   output tok/s   total tok/s   duration s   failed   (medians of "
          f"{args.rounds} rounds)")
    for router, v in summary.items():
        print(f"{router:<16}  {v['prefix_cache_hit_rate']:8.3f}   {v['output_tok_s']:12.2f}   {v['total_tok_s']:11.1f}"
              f"   {v['duration_s']:10.1f}   {v['failed']:6d}")
    if len(routers) == 2:
        a, b = (summary[r] for r in routers)
        print(f"{routers[0]} / {routers[1]}: total tok/s x{a['total_tok_s'] / b['total_tok_s']:.2f}, "
              f"hit rate {a['prefix_cache_hit_rate']:.3f} vs {b['prefix_cache_hit_rate']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                        "summary": summary}, indent=2) + "\n")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.environ.get("KVSERVE_IN_NETNS") == "1":
        return inside(args)
    import subprocess

    import netns_run

    ok, why = netns_run.available()
    if not ok:
        print(f"ray_routing_bench: {why}", file=sys.stderr)
        return 2
    from engine.models.resolve import resolve_model

    resolve_model(None)  # convert the default model once, before the replicas look for it
    with tempfile.TemporaryDirectory(prefix="kvs-ray-") as tmp:
        env = dict(os.environ, KVSERVE_IN_NETNS="1", PYTHONUNBUFFERED="1", RAY_TMPDIR=tmp,
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                   RAY_memory_monitor_refresh_ms="0")  # see tests/ray/test_ray_serve.py
        out = ["--out", str(args.out.resolve())] if args.out else []
        argv = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
        return subprocess.run(netns_run.command([sys.executable, os.path.abspath(__file__), *argv, *out]),
                              cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
