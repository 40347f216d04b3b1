"""BlockPool before and after lazy blocks: construction time at GPU pool sizes, and a steady serving workload.

    .venv/bin/python scripts/bench_block_pool.py [--baseline-ref 22ce9a9] [--rounds 3] [--sizes 20000,2000000]

The baseline is engine/core/block_pool.py as it was at `--baseline-ref` (default: the last commit with one
Python object and linked-list node made per block at construction), loaded from git into a module; the current
one is imported from the working tree. Both run in this process, alternating round by round, and the table
gives medians and the ratio current / baseline (< 1: the current pool is faster).

construct   BlockPool(N) for each size (the first KV-sizing decision on an H200 gives millions of blocks).
workload    a serving-like mix on a pool of each size, identical for both pools (seeded): per step, 4 new
            requests of 32 blocks whose first 8 blocks are a shared prefix (prefix-cache hits via `touch`
            once cached), every running request (up to 256) growing by one block one step in 16, each
            request's full blocks cached, and finished requests (after 16-48 steps) freed last block first.
            Reported as microseconds per pool call (get_new_blocks, touch, free_blocks, cache_block,
            get_cached_block), timed inside the calls only, twice: "first pass" from a new pool (the current
            pool makes each block's object on its first use, which the baseline did at construction) and
            "steady" after every block was handed out and freed once (a long-running server).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core import block_pool as current  # noqa: E402

STEPS = 600


def load_baseline(ref: str):
    source = subprocess.run(["git", "show", f"{ref}:engine/core/block_pool.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "block_pool_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("block_pool_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_construct(module, num_blocks: int) -> float:
    gc.collect()  # the previous pool is cyclic garbage (linked nodes): collect it outside the timing
    t0 = time.perf_counter()
    pool = module.BlockPool(num_blocks)
    dt = time.perf_counter() - t0
    assert pool.num_free_blocks == num_blocks
    return dt


def run_workload(module, num_blocks: int, seed: int, warm: bool) -> tuple[float, int]:
    """(seconds inside pool calls, pool calls) for STEPS steps of the mix in the module docstring. With
    `warm`, every block is handed out and freed once first (the steady state of a long-running server)."""
    rng = random.Random(seed)
    gc.collect()
    pool = module.BlockPool(num_blocks)
    if warm:
        pool.free_blocks(pool.get_new_blocks(num_blocks))
    clock = time.perf_counter
    running: list[tuple[list, int, int]] = []  # (blocks, finish step, request number)
    spent, calls, next_req = 0.0, 0, 0
    prefix = [b"prefix-%d" % i for i in range(8)]
    for step in range(STEPS):
        still = []
        for blocks, finish, req in running:
            if step >= finish:
                t0 = clock()
                pool.free_blocks(reversed(blocks))
                spent += clock() - t0
                calls += 1
            else:
                still.append((blocks, finish, req))
        running = still
        for blocks, _, req in running:
            if rng.random() < 1 / 16 and pool.num_free_blocks:
                name = b"r%d-%d" % (req, len(blocks))
                t0 = clock()
                new = pool.get_new_blocks(1)
                pool.cache_block(blocks[-1], name)  # the block just filled
                spent += clock() - t0
                calls += 2
                blocks.extend(new)
        for _ in range(4):
            if len(running) >= 256:
                break
            names = [prefix[i] if i < 8 else b"r%d-%d" % (next_req, i) for i in range(31)]
            t0 = clock()
            hits = []
            for h in prefix:
                block = pool.get_cached_block(h)
                if block is None:
                    break
                hits.append(block)
            if 32 - len(hits) > pool.num_free_blocks:
                spent += clock() - t0
                break
            pool.touch(hits)
            blocks = hits + pool.get_new_blocks(32 - len(hits))
            for i in range(len(hits), 31):
                pool.cache_block(blocks[i], names[i])
            spent += clock() - t0
            calls += min(len(hits) + 1, len(prefix)) + 2 + (31 - len(hits))  # lookups, touch, get, caches
            running.append((blocks, step + rng.randint(16, 48), next_req))
            next_req += 1
    return spent, calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-ref", default="22ce9a9")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="20000,2000000")
    args = p.parse_args()
    baseline = load_baseline(args.baseline_ref)
    sizes = [int(s) for s in args.sizes.split(",")]
    pools = {"baseline": baseline, "current": current}
    construct = {(name, n): [] for name in pools for n in sizes}
    first = {(name, n): [] for name in pools for n in sizes}
    steady = {(name, n): [] for name in pools for n in sizes}
    for r in range(args.rounds):
        order = list(pools.items()) if r % 2 == 0 else list(pools.items())[::-1]
        for n in sizes:
            for name, module in order:
                construct[name, n].append(time_construct(module, n))
                for table, warm in ((first, False), (steady, True)):
                    seconds, calls = run_workload(module, n, seed=r, warm=warm)
                    table[name, n].append(seconds / calls * 1e6)
    print(f"baseline: engine/core/block_pool.py at {args.baseline_ref}; medians of {args.rounds} alternating rounds")
    print(f"{'measure':<26} {'blocks':>9} {'baseline':>12} {'current':>12} {'current/base':>12}")
    for label, table, unit in (("construct (ms)", construct, 1e3), ("first pass (us per call)", first, 1.0),
                               ("steady (us per call)", steady, 1.0)):
        for n in sizes:
            b = statistics.median(table["baseline", n]) * unit
            c = statistics.median(table["current", n]) * unit
            print(f"{label:<26} {n:>9} {b:12.3f} {c:12.3f} {c / b:12.3f}")


if __name__ == "__main__":
    main()
