"""`ServerConfig`: the HTTP server's own settings and request limits (the engine has `EngineArgs`).

Built from CLI flags in one place (`from_cli_args`); validated in `__post_init__`. Engine-side caps on
sampling parameters (n, stop strings, logprobs) live in `engine.sampling_params` and are enforced there.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from .chat_template import load_chat_template

DEFAULT_MAX_BODY_BYTES = 4 * 2**20  # a 128k-token prompt as a JSON list of ids is ~0.8 MB
DEFAULT_MAX_QUEUE = 4096
MAX_CHAT_MESSAGES = 512
MAX_PROMPTS = 256  # prompts in one /v1/completions request (each is an engine request)
MAX_ERROR_MESSAGE_CHARS = 512
API_KEY_ENV = "KVSERVE_API_KEY"
# Text longer than this many characters per token of the context window will not fit in it (English
# averages ~4 characters per token with BPE vocabularies, code ~3; 16 leaves room for long runs of spaces or
# repeated characters), so it is refused before the tokenizer spends time on it: tokenizing 16 x 8192
# characters takes about a second of one core.
PROMPT_CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE  # sequences waiting for the engine before new requests get 429
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_prompt_chars: int | None = None  # None: PROMPT_CHARS_PER_TOKEN x the context window
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    step_timeout: float = 60.0  # an engine step running longer means the engine hangs (0 = never)
    exit_on_engine_failure: bool = False  # exit with status 1 once the engine failed (for supervisors)
    max_header_bytes: int = 16 * 1024
    request_head_timeout: float = 10.0  # a connection must send a complete request head within this
    request_body_timeout: float = 30.0  # ... and then its whole body within this
    keep_alive_timeout: float = 5.0  # an idle keep-alive connection is closed after this
    special_tokens_in_messages: bool = False  # chat content may spell the model's control tokens
    chat_template: str | None = None  # template text replacing the model's (see chat_template.py)
    tool_call_parser: str | None = None  # None: detected from the chat template
    reasoning_parser: str | None = None  # None: reasoning stays in the content
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
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars: must be >= 1, got {self.max_prompt_chars}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes: must be >= 1024, got {self.max_header_bytes}")
        for name in ("shutdown_timeout", "step_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        from .reasoning import REASONING_PARSERS
        from .tool_parsers import TOOL_PARSERS

        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_PARSERS:
            raise ValueError(f"tool_call_parser: must be one of {', '.join(TOOL_PARSERS)}, got {self.tool_call_parser!r}")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser: must be one of {', '.join(REASONING_PARSERS)}, got "
                             f"{self.reasoning_parser!r}")
        for name in ("request_head_timeout", "request_body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")

    def prompt_char_limit(self, max_model_len: int) -> int:
        return self.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * max_model_len

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
        g.add_argument("--max-prompt-chars", type=int, default=None,
                       help=f"longest prompt text, or chat message text in total, that is tokenized (400); default "
                            f"{PROMPT_CHARS_PER_TOKEN} x the context window")
        g.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds in-flight requests may take to finish after SIGTERM before they are aborted")
        g.add_argument("--step-timeout", type=float, default=60.0,
                       help="seconds one engine step may take before the engine counts as hung: in-flight requests "
                            "fail and /health turns 503 (0 = no limit)")
        g.add_argument("--exit-on-engine-failure", action="store_true",
                       help="exit with status 1 once the engine has failed or hung, so a supervisor restarts it")
        g.add_argument("--request-head-timeout", type=float, default=10.0,
                       help="seconds a connection has to send a complete request line and headers")
        g.add_argument("--request-body-timeout", type=float, default=30.0,
                       help="seconds a request has, after its headers, to send its whole body (408)")
        g.add_argument("--keep-alive-timeout", type=float, default=5.0,
                       help="seconds an idle keep-alive connection is kept open")
        g.add_argument("--special-tokens-in-messages", action="store_true",
                       help="let chat message text spell the model's control tokens (e.g. <|im_start|>); by default "
                            "message text is tokenized as plain text, so a user cannot open a fake system turn")
        g.add_argument("--chat-template", default=None, metavar="PATH_OR_STRING",
                       help="a chat template replacing the model's: a file, Jinja text, or a template kvserve ships "
                            "(smollm2-tools: SmolLM2's ChatML with function tools)")
        g.add_argument("--tool-call-parser", default=None, choices=("hermes", "llama3_json"),
                       help="the format tool calls are parsed from (default: detected from the chat template)")
        g.add_argument("--reasoning-parser", default=None, choices=("qwen3", "deepseek_r1"),
                       help="split <think>...</think> into message.reasoning_content (default: no split)")
        g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                       help="one log line per request")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerConfig":
        return cls(host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                   served_model_name=args.served_model_name, max_queue=args.max_queue,
                   max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars,
                   shutdown_timeout=args.shutdown_timeout, step_timeout=args.step_timeout,
                   exit_on_engine_failure=args.exit_on_engine_failure,
                   request_head_timeout=args.request_head_timeout, request_body_timeout=args.request_body_timeout,
                   keep_alive_timeout=args.keep_alive_timeout,
                   special_tokens_in_messages=args.special_tokens_in_messages,
                   chat_template=load_chat_template(args.chat_template) if args.chat_template else None,
                   tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser,
                   log_level=args.log_level, access_log=args.access_log)
