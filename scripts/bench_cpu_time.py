"""`kvserve bench`, with the engine's timed runs also measured in CPU time of the engine's thread.

    PYTHONPATH=<checkout> python scripts/bench_cpu_time.py [kvserve bench arguments] --cpu-threads 1

On a machine shared with other busy jobs, wall-clock throughput swings by 2x between runs while the work
done does not: each engine round's result gets `thread_cpu_s` (time.thread_time() around the round; with one
torch thread every op runs on this thread) and `output_tok_per_cpu_s`. It patches `EngineRun.run`, which
every revision of the benchmark has, so it measures any checkout (scripts/ab_bench.sh uses it with
AB_CPU_TIME=1).
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    import engine.tools.bench as bench
    from engine.cli import main as cli_main

    timed_run = bench.EngineRun.run

    def run(self, wl, *args, **kwargs):
        t0 = time.thread_time()
        result = timed_run(self, wl, *args, **kwargs)
        result["thread_cpu_s"] = time.thread_time() - t0
        result["output_tok_per_cpu_s"] = result["output_tokens"] / result["thread_cpu_s"]
        return result

    bench.EngineRun.run = run
    return cli_main(["bench", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
