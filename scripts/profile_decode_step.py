"""Where a decode step's time goes, op by op and function by function, for one weight / KV configuration.

    .venv/bin/python scripts/profile_decode_step.py --config int8+kv-int8 --streams 1 --steps 48 --cpu-threads 1

Builds the default model (or --model) with the configuration (`kvserve eval-ppl`'s names: base, int8, int4,
int8+kv-int8, ...), prefills --streams random prompts, then decodes --steps steps twice:

1. under torch.profiler: the top tensor ops by self CPU time, in ms per step, and how much of the step's
   wall time no op accounts for (Python: scheduler, batch building, sampling glue, output processing);
2. under cProfile with `time.thread_time` as the timer (a busy shared machine does not inflate it): the top
   Python functions by own time and by cumulative time, in ms per step.

With --cpu-threads 1 every op runs on the profiled thread, so both splits add up to the step; with more
threads the ops' helper-thread time is not counted. The profilers slow small ops and calls down: the split
gives proportions, `kvserve speed` gives the timings.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def start(llm, streams: int, input_len: int, steps: int) -> None:
    import torch

    from engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(0)
    vocab = llm.tokenizer.vocab_size
    sp = SamplingParams(temperature=0.0, max_tokens=steps + 2, ignore_eos=True)
    for i in range(streams):
        llm.engine.add_request(f"prof-{time.monotonic_ns()}-{i}",
                               torch.randint(100, vocab - 1, (input_len,), generator=g).tolist(), sp)
    while True:  # prefill (maybe chunked) until every sequence is decoding
        llm.engine.step()
        sched = llm.engine.scheduler if hasattr(llm.engine, "scheduler") else None
        if sched is None or not getattr(sched, "waiting", None):
            break
    llm.engine.step()  # the first decode step, outside the profiles


def drain(llm) -> None:
    while llm.engine.has_unfinished_requests():
        llm.engine.step()


def main() -> int:
    from engine.config import EngineArgs
    from engine.tools.eval_ppl import parse_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    EngineArgs.add_cli_args(p)
    p.add_argument("--config", default="base")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--top", type=int, default=18)
    args = p.parse_args()
    base = dataclasses.replace(EngineArgs.from_cli_args(args), max_num_seqs=max(args.streams, 1))
    llm = parse_config(args.config).build(base)

    from torch.profiler import ProfilerActivity, profile

    start(llm, args.streams, args.input_len, args.steps)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            llm.engine.step()
    wall = (time.perf_counter() - t0) / args.steps * 1e3
    drain(llm)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    inside = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    # ops called from Python (not from inside another op): each pays the dispatch cost once; a count that
    # does not depend on the machine's load
    top_level = sum(e.cpu_parent is None for e in prof.events()) / args.steps
    print(f"config {args.config}, {args.streams} stream(s), torch.profiler: step {wall:.2f} ms wall, ops' self "
          f"CPU {inside:.2f} ms, outside any op {max(wall - inside, 0):.2f} ms; {top_level:.0f} ops called "
          f"from Python per step")
    print(f"{'op':<52} {'ms/step':>8} {'calls/step':>10}")
    for e in events[:args.top]:
        print(f"{e.key[:52]:<52} {e.self_cpu_time_total / 1e3 / args.steps:>8.3f} {e.count / args.steps:>10.1f}")

    start(llm, args.streams, args.input_len, args.steps)
    prof2 = cProfile.Profile(time.thread_time)
    c0 = time.thread_time()
    prof2.enable()
    for _ in range(args.steps):
        llm.engine.step()
    prof2.disable()
    cpu = (time.thread_time() - c0) / args.steps * 1e3
    drain(llm)
    for sort in ("tottime", "cumulative"):
        buf = io.StringIO()
        st = pstats.Stats(prof2, stream=buf)
        st.sort_stats(sort)
        print(f"\ncProfile (thread CPU time), step {cpu:.2f} ms CPU, {st.total_calls / args.steps:.0f} Python "
              f"calls per step; top by {sort}, ms per step:")
        print(f"{'function':<70} {'own':>7} {'cum':>7} {'calls/step':>10}")
        rows = sorted(st.stats.items(), key=lambda kv: kv[1][2 if sort == "tottime" else 3], reverse=True)
        for (file, line, fn), (cc, nc, tt, ct, _) in rows[:args.top]:
            where = f"{Path(file).name}:{line}({fn})" if file != "~" else fn
            print(f"{where[:70]:<70} {tt / args.steps * 1e3:>7.3f} {ct / args.steps * 1e3:>7.3f} "
                  f"{nc / args.steps:>10.1f}")
    llm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
