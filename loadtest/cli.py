"""`kvserve loadtest` / `python -m loadtest`: flags -> `LoadConfig` -> run or sweep -> table, JSON, plot.

Exit status: 0 when at least one measured request completed, 1 when none did, 2 for a usage error
(a bad flag value, or no model could be found).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from rich.console import Console

from loadtest.config import LoadConfig, LoadShape, Slo, Target, WorkloadConfig
from loadtest.lengths import LengthSpec


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or inf, got {text}")
    return value


def _length(text: str) -> LengthSpec:
    try:
        return LengthSpec.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _slo(text: str) -> Slo:
    try:
        return Slo.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _id_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, got {text!r}")
    try:
        return int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers LOW:HIGH, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("server")
    g.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                   help="/v1/completions (token-id prompts) or /v1/chat/completions (text prompts)")
    g.add_argument("--model", default=None, help="model name to send (default: the first id of GET /v1/models)")
    g.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default: $OPENAI_API_KEY)")
    g.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds (default 600)")
    g.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="do not send ignore_eos: true (outputs may then stop before max_tokens)")
    g.add_argument("--no-metrics", dest="scrape_metrics", action="store_false", help="do not scrape GET /metrics")

    w = parser.add_argument_group("workload")
    w.add_argument("--num-requests", type=int, default=100, help="measured requests (default 100)")
    w.add_argument("--input-len", type=_length, default=LengthSpec.fixed(128),
                   help="prompt tokens: N, LOW:HIGH (uniform) or normal:MEAN,STD (default 128); the suffix length with --shared-prefix-groups")
    w.add_argument("--output-len", type=_length, default=LengthSpec.fixed(128),
                   help="max_tokens per request, same spellings (default 128)")
    w.add_argument("--dataset", type=Path, default=None, help="JSONL prompt file: ShareGPT conversations or {\"prompt\", \"max_tokens\"?} lines")
    w.add_argument("--shared-prefix-groups", type=int, default=0, help="G groups of requests sharing a common prefix (default 0: off)")
    w.add_argument("--shared-prefix-len", type=int, default=1024, help="length of each group's shared prefix in tokens (default 1024)")
    w.add_argument("--token-id-range", type=_id_range, default=(100, 30000), help="random token ids are drawn from [LOW, HIGH) (default 100:30000)")
    w.add_argument("--seed", type=int, default=0, help="seed of the workload and the arrival schedule (default 0)")

    s = parser.add_argument_group("load shape")
    s.add_argument("--request-rate", type=_rate, default=math.inf, help="mean requests per second, or inf to send all at once (default inf)")
    s.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape of the gaps: 1 = Poisson, <1 burstier, >1 steadier (default 1)")
    s.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight (default: no limit)")
    s.add_argument("--warmup", type=int, default=0, help="warm-up requests sent first and left out of the stats (default 0)")
    s.add_argument("--sweep", default=None, help="run several points: rates 1,2,4,inf or concurrency:1,4,16")

    o = parser.add_argument_group("objectives and output")
    o.add_argument("--goodput", nargs="+", type=_slo, default=[], metavar="METRIC:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:2000")
    o.add_argument("--out", type=Path, default=None, help="write the results (aggregates + every request) as JSON")
    o.add_argument("--plot", type=Path, default=None, help="write a PNG: TTFT/TPOT histograms, or latency vs throughput for a sweep")


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The one place where flags become a `LoadConfig` (ValueError names the bad parameter)."""
    return LoadConfig(
        target=Target(base_url=args.base_url, endpoint=args.endpoint, model=args.model, api_key=args.api_key,
                      timeout_s=args.timeout, ignore_eos=args.ignore_eos),
        workload=WorkloadConfig(num_requests=args.num_requests, input_len=args.input_len, output_len=args.output_len,
                                dataset=args.dataset, prefix_groups=args.shared_prefix_groups,
                                prefix_len=args.shared_prefix_len if args.shared_prefix_groups else 0,
                                token_id_range=args.token_id_range),
        shape=LoadShape(request_rate=args.request_rate, burstiness=args.burstiness,
                        max_concurrency=args.max_concurrency, warmup_requests=args.warmup),
        slos=tuple(args.goodput),
        seed=args.seed,
        scrape_metrics=args.scrape_metrics,
    )


def run(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and flag errors stay fast.
    from loadtest.plot import plot_run, plot_sweep
    from loadtest.progress import RichProgress
    from loadtest.report import print_run, print_sweep
    from loadtest.results_json import run_to_dict, sweep_to_dict, write_json
    from loadtest.runner import ModelLookupError, run_load_sync
    from loadtest.sweep import SweepSpec, run_sweep_sync

    err = Console(stderr=True)
    try:
        config = config_from_args(args)
        sweep = SweepSpec.parse(args.sweep) if args.sweep else None
        if args.dataset is not None:
            from loadtest.dataset import load_prompt_file
            load_prompt_file(args.dataset)  # fail on a bad file before any request is sent
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    # A file or pipe gets wide lines rather than rich's 80-column default, so a sweep's table stays readable.
    out = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        with RichProgress(err) as progress:
            if sweep is None:
                result = run_load_sync(config, progress=progress)
            else:
                swept = run_sweep_sync(config, sweep, progress=progress)
    except ModelLookupError as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    if sweep is None:
        print_run(result, out)
        runs = [result]
        data = run_to_dict(result)
    else:
        print_sweep(swept, out)
        runs = list(swept.points)
        data = sweep_to_dict(swept)
    if args.out:
        write_json(args.out, data)
        out.print(f"results written to {args.out}")
    if args.plot:
        plot_run(result, args.plot) if sweep is None else plot_sweep(swept, args.plot)
        out.print(f"plot written to {args.plot}")
    return 0 if any(r.stats.completed for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description="load-test an OpenAI-compatible server")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
