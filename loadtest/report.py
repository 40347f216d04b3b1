"""Console output: the summary of a run, the server's /metrics deltas, and a sweep's one-row-per-point table."""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.table import Table

from loadtest.metrics_scrape import ServerMetricsDelta
from loadtest.runner import LoadResult
from loadtest.stats import Summary
from loadtest.sweep import SweepResult

_LATENCIES = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2EL", "e2el_ms"))


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _count(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def summary_table(result: LoadResult) -> Table:
    s, shape = result.stats, result.config.shape
    rate = "inf" if math.isinf(shape.request_rate) else f"{shape.request_rate:g}/s"
    t = Table(title=f"Load test: {result.model} @ {result.config.target.url}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("Load shape", f"rate {rate}, burstiness {shape.burstiness:g}, "
              f"max concurrency {shape.max_concurrency or '-'}")
    t.add_row("Completed requests", str(s.completed))
    failed = str(s.failed) + (" (" + ", ".join(f"{k}: {v}" for k, v in s.failed_by.items()) + ")" if s.failed else "")
    t.add_row("Failed requests", failed)
    t.add_row("Duration (s)", _f(s.duration_s))
    t.add_row("Input tokens", f"{s.total_input_tokens:,}")
    t.add_row("Output tokens", f"{s.total_output_tokens:,}")
    t.add_row("Request throughput (req/s)", _f(s.request_throughput))
    t.add_row("Output throughput (tok/s)", _f(s.output_throughput))
    t.add_row("Total token throughput (tok/s)", _f(s.total_token_throughput))
    if s.goodput is not None:
        slos = ", ".join(f"{slo.metric}<={slo.limit_ms:g}ms" for slo in result.config.slos)
        t.add_row(f"Goodput (req/s; {slos})", f"{_f(s.goodput)} ({s.good_requests} requests)")
    lag = s.send_lag_ms
    if lag.p99 is not None:
        t.add_row("Send lag behind schedule (ms)", f"mean {_f(lag.mean)}, p99 {_f(lag.p99)}")
    if s.output_tokens_counted_from_chunks:
        t.add_row("Output tokens counted from chunks", f"{s.output_tokens_counted_from_chunks} requests had no usage")
    if result.warmup.requests:
        t.add_row("Warm-up requests (not counted)", f"{result.warmup.requests} ({result.warmup.failed} failed)")
    return t


def latency_table(result: LoadResult) -> Table:
    t = Table(title="Latency (ms)", title_justify="left")
    for col in ("", "mean", "median", "p90", "p95", "p99"):
        t.add_column(col, justify="right" if col else "left")
    for name, attr in _LATENCIES:
        summ: Summary = getattr(result.stats, attr)
        t.add_row(name, _f(summ.mean), _f(summ.median), _f(summ.p90), _f(summ.p95), _f(summ.p99))
    return t


def server_table(m: ServerMetricsDelta) -> Table:
    t = Table(title=f"Server /metrics deltas ({m.prefix}*)", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    reasons = ", ".join(f"{k}: {v:,.0f}" for k, v in m.requests_by_finished_reason.items())
    t.add_row("Requests succeeded", _count(m.requests_succeeded) + (f" ({reasons})" if reasons else ""))
    t.add_row("Prompt tokens", _count(m.prompt_tokens))
    t.add_row("Generation tokens", _count(m.generation_tokens))
    t.add_row("Preemptions", _count(m.preemptions))
    rate = m.prefix_cache_hit_rate
    t.add_row("Prefix-cache hit rate", "-" if rate is None else
              f"{rate:.1%} ({_count(m.prefix_cache_hits)} / {_count(m.prefix_cache_queries)} tokens)")
    acceptance = m.spec_acceptance_rate
    if acceptance is not None:
        t.add_row("Speculative decoding", f"acceptance rate {acceptance:.1%} "
                  f"({_count(m.spec_decode_num_accepted_tokens)} / {_count(m.spec_decode_num_draft_tokens)} draft "
                  f"tokens), mean accepted length {m.spec_mean_accepted_length:.2f}")
    queue = m.mean_queue_time_s
    t.add_row("Mean queue time (ms)", "-" if queue is None else f"{queue * 1e3:,.2f} over {_count(m.queue_time_count)} requests")
    if m.step_seconds_by_kind:
        busy = m.busy_seconds or 0.0
        t.add_row("Engine step time (s)", ", ".join(f"{k} {v:,.2f}" + (f" ({v / busy:.0%})" if busy else "")
                                                     for k, v in m.step_seconds_by_kind.items() if v))
        t.add_row("Model FLOPs by phase", ", ".join(f"{k} {_si(v)}" for k, v in m.model_flops_by_phase.items()))
        t.add_row("Bytes moved by phase", ", ".join(f"{k} {_si(v)}B" for k, v in m.model_bytes_by_phase.items()))
        if m.mfu_busy is None:
            t.add_row("Utilization (busy time)", "- (the server declares no peak: --peak-gpu / --peak-flops)")
        else:
            t.add_row("Utilization (busy time)", f"MFU {m.mfu_busy:.1%} of {_si(m.peak_flops)}FLOP/s, "
                                                 f"MBU {m.mbu_busy:.1%} of {_si(m.peak_bandwidth)}B/s")
    return t


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    for v, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= v:
            return f"{x / v:,.2f} {p}"
    return f"{x:,.2f} "


def print_run(result: LoadResult, console: Console) -> None:
    console.print(summary_table(result))
    console.print(latency_table(result))
    if result.server_metrics is not None:
        console.print(server_table(result.server_metrics))
    elif result.config.scrape_metrics:
        console.print("Server /metrics: not available (no kvserve:/vllm: metrics found)")


def sweep_table(sweep: SweepResult) -> Table:
    t = Table(title=f"Sweep over {sweep.spec.kind}: latency vs throughput", title_justify="left", box=box.SIMPLE_HEAD)
    cols = ("point", "done", "failed", "req/s", "out tok/s", "TTFT mean", "TTFT p99",
            "TPOT mean", "TPOT p99", "ITL p99", "E2EL mean", "goodput")
    for col in cols:
        t.add_column(col, justify="left" if col == "point" else "right")
    for value, p in zip(sweep.spec.values, sweep.points):
        s = p.stats
        t.add_row(sweep.spec.label(value), str(s.completed), str(s.failed), _f(s.request_throughput),
                  _f(s.output_throughput, 1), _f(s.ttft_ms.mean), _f(s.ttft_ms.p99), _f(s.tpot_ms.mean),
                  _f(s.tpot_ms.p99), _f(s.itl_ms.p99), _f(s.e2el_ms.mean), _f(s.goodput))
    return t


def print_sweep(sweep: SweepResult, console: Console) -> None:
    console.print(sweep_table(sweep))
    console.print("(latencies in ms; each point's full summary is in the --out file)")
