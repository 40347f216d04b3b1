"""`ServerConfig`: the HTTP server's own settings and request limits (the engine has `EngineArgs`).

Built from CLI flags in one place (`from_cli_args`); validated in `__post_init__`. Engine-side caps on
sampling parameters (n, stop strings, logprobs) live in `engine.sampling_params` and are enforced there.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

DEFAULT_MAX_BODY_BYTES = 4 * 2**20  # a 128k-token prompt as a JSON list of ids is ~0.8 MB
DEFAULT_MAX_QUEUE = 4096
MAX_CHAT_MESSAGES = 512
MAX_ERROR_MESSAGE_CHARS = 512
API_KEY_ENV = "KVSERVE_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE  # sequences waiting for the engine before new requests get 429
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    max_header_bytes: int = 16 * 1024
    log_level: str = "info"
    access_log: bool = True
    retry_after_s: int = 1  # Retry-After on 429

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key: must not be empty")
        if self.max_queue < 1:
            raise ValueError(f"max_queue: must be >= 1, got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be >= 1024, got {self.max_body_bytes}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout: must be >= 0, got {self.shutdown_timeout}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("server")
        g.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
        g.add_argument("--port", type=int, default=8000, help="port to bind (0 = any free port)")
        g.add_argument("--api-key", default=None,
                       help=f"require 'Authorization: Bearer KEY' on every route but /health (or set {API_KEY_ENV})")
        g.add_argument("--served-model-name", default=None, help="the model name clients send (default: the model's)")
        g.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                       help="most sequences waiting for the engine; beyond it requests get 429")
        g.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="largest request body (413)")
        g.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds in-flight requests may take to finish after SIGTERM before they are aborted")
        g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                       help="one log line per request")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerConfig":
        return cls(host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                   served_model_name=args.served_model_name, max_queue=args.max_queue,
                   max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout,
                   log_level=args.log_level, access_log=args.access_log)
