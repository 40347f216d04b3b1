"""Fixtures for the server tests: a tiny random Llama and live servers on free loopback ports.

The tiny model (2 layers, hidden 64) has the default model's tokenizer, so prompts, chat templates and
token ids are realistic while a step takes milliseconds. Servers are real: uvicorn on a socket bound to
127.0.0.1 port 0, in a background thread, with a real engine loading that model.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TINY_MAX_MODEL_LEN = 512


def build_tiny_model(out: Path) -> Path:
    from engine.models.tiny import save_tiny_llama

    return save_tiny_llama(out, max_position_embeddings=TINY_MAX_MODEL_LEN)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every server test module runs the engine on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


class LiveServer:
    """A kvserve app served by uvicorn in a background thread until `stop()`."""

    def __init__(self, engine_factory, api_key: str | None = API_KEY, **server_options):
        from server.app import build_app
        from server.config import ServerConfig
        from server.context import ServerContext
        from server.serving import DrainingServer, uvicorn_config

        self.api_key = api_key
        self.config = ServerConfig(api_key=api_key, port=0, log_level="warning", **server_options)
        self.ctx = ServerContext(self.config, engine_factory)
        app = build_app(self.ctx)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = DrainingServer(uvicorn_config(app, self.ctx, log_config=None), self.ctx)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="test-uvicorn", daemon=True)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))
        self.loop.close()

    def start(self, timeout: float = 120, wait_until_loaded: bool = True) -> "LiveServer":
        self._thread.start()
        if wait_until_loaded:
            assert self.ctx.ready.wait(timeout), "the engine did not load in time"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def call_in_loop(self, coro, timeout: float = 30):
        """Run a coroutine on the server's event loop (e.g. ctx.drain) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def tiny_engine_factory(model_dir: Path, hook=None, **engine_kwargs):
    def build():
        from engine.config import EngineArgs
        from engine.engine import LLMEngine

        kwargs = dict(model=str(model_dir), num_kv_blocks=256)
        kwargs.update(engine_kwargs)
        engine = LLMEngine.from_args(EngineArgs(**kwargs))
        return hook(engine) if hook is not None else engine

    return build


@pytest.fixture(scope="session")
def server(tiny_llama_dir):
    """The shared server: tiny model, API key required, 64 KiB body limit."""
    live = LiveServer(tiny_engine_factory(tiny_llama_dir), max_body_bytes=64 * 1024).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def own_server(tiny_llama_dir):
    """A server for one test module alone (its metrics and KV cache start empty): tiny model, no API key."""
    live = LiveServer(tiny_engine_factory(tiny_llama_dir)).start()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def offline_llm(tiny_llama_dir):
    """The offline API on the same model directory: the reference for greedy outputs."""
    from engine import LLM

    return LLM(str(tiny_llama_dir), num_kv_blocks=256)


@pytest.fixture(scope="session")
def parse_sse():
    return sse_events


@pytest.fixture(scope="session")
def parse_metrics():
    return metric_values


@pytest.fixture(scope="session")
def live_server():
    """The LiveServer class and an engine-factory builder, for tests that need a server of their own."""
    return LiveServer, tiny_engine_factory


def sse_events(lines) -> list:
    """Parse SSE lines into a list of JSON objects, with the string "[DONE]" for the terminator. Checks the
    framing: every event is one `data: ` line followed by a blank line."""
    import json

    events, expect_blank = [], False
    for line in lines:
        if expect_blank:
            assert line == "", f"an SSE event must end with a blank line, got {line!r}"
            expect_blank = False
            continue
        assert line.startswith("data: "), f"unexpected SSE line {line!r}"
        payload = line[len("data: "):]
        events.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
        expect_blank = True
    return events


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
