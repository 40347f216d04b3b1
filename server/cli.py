"""`kvserve serve`: the engine's flags plus the server's, then uvicorn until SIGTERM/SIGINT.

    kvserve serve                                  # the default model on http://127.0.0.1:8000
    kvserve serve --model ./my-model --port 0      # any free port; the startup line says which
    KVSERVE_API_KEY=secret kvserve serve --host 0.0.0.0
    kvserve serve --replicas 2                     # N engine replicas on Ray Serve (server.ray_cli)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import NoReturn

from engine.config import EngineArgs
from engine.tools.peaks import PeakArgs

from .config import ServerConfig
from .ray_config import RayServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ServerConfig.add_cli_args(parser)
    EngineArgs.add_cli_args(parser)
    PeakArgs.add_cli_args(parser)
    RayServeConfig.add_cli_args(parser)


def run(args: argparse.Namespace) -> int:
    from .app import build_app
    from .context import ServerContext
    from .serving import DrainingServer, uvicorn_config

    try:
        config = ServerConfig.from_cli_args(args)
        engine_args = EngineArgs.from_cli_args(args)
        peak_args = PeakArgs.from_cli_args(args)
        ray_config = RayServeConfig.from_cli_args(args)
    except ValueError as e:
        print(f"kvserve serve: {e}")
        return 2
    logging.getLogger("kvserve.access").setLevel(logging.INFO if config.access_log else logging.WARNING)
    if ray_config is not None:
        from . import ray_cli

        return ray_cli.run(config, ray_config, engine_args, peak_args)

    def build_engine():
        from engine.engine import LLMEngine

        return LLMEngine.from_args(engine_args)

    ctx = ServerContext(config, build_engine, peak_args)
    app = build_app(ctx)
    server = DrainingServer(uvicorn_config(app, ctx, log_config=None), ctx)
    asyncio.run(server.serve())
    if ctx.engine_loop is not None and ctx.engine_loop.stuck_in_step:
        leave_now(ctx.engine_loop, server.exit_code)
    return server.exit_code


def leave_now(engine_loop, code: int) -> NoReturn:
    """Exit with the engine thread stuck in a step (a hung worker, a kernel that never returns). The
    interpreter cannot finalize safely then: a collective that fails while it finalizes (its peer killed by an
    exit handler) aborts the process with SIGABRT instead of `code`. So stop the workers here and skip the
    finalization; the logs are flushed first."""
    logging.getLogger(__name__).warning("The engine thread is stuck in a step: stopping its workers and "
                                        "exiting with status %d without finalizing", code)
    engine_loop.abandon()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
