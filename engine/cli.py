"""The `kvserve` command: one entry point, one module per subcommand.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`; it is imported only when
its subcommand runs, so `kvserve plan` never imports torch and `kvserve generate` never imports FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.cli", "run the OpenAI-compatible HTTP server"),
    "generate": ("engine.generate_cli", "generate text offline and stream it to the terminal"),
    "bench": ("engine.tools.bench", "offline throughput benchmark (optionally side by side with HF transformers)"),
    "plan": ("engine.tools.planner", "KV-cache capacity and roofline planner"),
    "demo": ("engine.tools.kv_demo", "demonstrations: `demo kv-cache` = with vs without the KV cache, same run"),
    "eval-ppl": ("engine.tools.eval_ppl", "perplexity and greedy agreement of quantization configurations, same run"),
    "speed": ("engine.tools.decode_speed", "decode latency and throughput of weight/KV configurations, same run"),
    "calibrate": ("engine.tools.peaks", "measure this CPU's peak FLOP/s and memory bandwidth (for utilization)"),
    "loadtest": ("loadtest.cli", "load-test an OpenAI-compatible server"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="kvserve", description="kvserve: a paged-KV-cache LLM server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    # Before torch is imported: the OpenMP runtime reads its settings once, when it is loaded.
    from .worker.cpu_threads import openmp_env_defaults

    openmp_env_defaults(os.environ)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"kvserve {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
