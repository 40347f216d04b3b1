"""A fake OpenAI-compatible streaming server on loopback, with known, injected delays.

It speaks just enough HTTP/1.1 (keep-alive, chunked responses) for httpx: GET /v1/models, GET /metrics
(kvserve: counters that move by known amounts per request) and POST /v1/completions and
/v1/chat/completions as SSE streams. Per request, `reply(n, body)` (n = arrival order) returns the fields
of a `Reply` as a dict: a status code, the delay to the first token, the gap between tokens, whether usage
is sent...
The server runs its own event loop in a thread, so it serves `run_load_sync` and `await run_load` alike.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pytest

MODEL = "fake-model"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    ttft_s: float = 0.0  # headers at once, first token after this
    itl_s: float = 0.0  # then one token chunk every itl_s
    tokens: int | None = None  # default: the request's max_tokens
    usage: bool = True
    stream_error: bool = False  # send an error object instead of the first token
    preempted: bool = False  # counted in kvserve:num_preemptions_total
    prefix_hit_tokens: int = 0  # counted in kvserve:prefix_cache_hits_total
    queue_s: float = 0.0  # added to kvserve:request_queue_time_seconds
    count_after_s: float = 0.0  # the counters move this long after the stream ends


class FakeOpenAIServer:
    model = MODEL

    def __init__(self, reply: Callable[[int, dict], dict] | None = None, *, metrics: bool = True) -> None:
        self.reply = reply or (lambda n, body: {})
        self.metrics = metrics
        self.requests: list[dict] = []  # bodies of completion requests, in arrival order
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        # counters start away from zero so that a test can tell a delta from a total
        self.counters = {"preemptions": 7, "queries": 1000, "hits": 400, "queue_sum": 3.0, "queue_count": 10,
                         "prompt": 5000, "generation": 9000, "length": 20, "stop": 5}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # ---- HTTP ---------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, value = h.decode().split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                await self._route(method, path, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()

    async def _route(self, method: str, path: str, headers: dict, body: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path == "/v1/models":
            await self._send(writer, 200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
        elif method == "GET" and path == "/metrics" and self.metrics:
            await self._send(writer, 200, self.metrics_text(), "text/plain; version=0.0.4")
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            await self._stream(json.loads(body), headers, path.endswith("chat/completions"), writer)
        else:
            await self._send(writer, 404, json.dumps({"error": {"message": "not found"}}))

    async def _stream(self, req: dict, headers: dict, chat: bool, writer: asyncio.StreamWriter) -> None:
        n = len(self.requests)
        self.requests.append(req)
        self.headers.append(headers)
        reply = Reply(**self.reply(n, req))
        if reply.status != 200:
            await self._send(writer, reply.status, json.dumps({"error": {"message": f"fake {reply.status}", "code": reply.status}}))
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._tokens(req, reply, chat, writer)
        finally:
            self.in_flight -= 1

    async def _tokens(self, req: dict, reply: Reply, chat: bool, writer: asyncio.StreamWriter) -> None:
        start = time.perf_counter()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")

        async def event(obj: object) -> None:
            data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        def choice(text: str, finish: str | None = None) -> dict:
            c = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            return {"id": "x", "choices": [{**c, "finish_reason": finish}]}

        if chat:  # servers announce the role at once; this must not count as the first token
            await event({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        tokens = req["max_tokens"] if reply.tokens is None else reply.tokens
        for k in range(tokens):
            await asyncio.sleep(max(0.0, start + reply.ttft_s + k * reply.itl_s - time.perf_counter()))
            if reply.stream_error:
                await event({"error": {"message": "fake engine failure", "code": 500}})
                break
            await event(choice(f" t{k}"))
        else:
            await event(choice("", "length"))
        prompt = req.get("prompt") if not chat else req["messages"][0]["content"]
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        if reply.usage and not reply.stream_error:
            await event({"id": "x", "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                                              "total_tokens": prompt_tokens + tokens}})
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        if reply.stream_error:
            return
        if reply.count_after_s:
            self._loop.call_later(reply.count_after_s, self._count, reply, prompt_tokens, tokens)
        else:
            self._count(reply, prompt_tokens, tokens)

    def _count(self, reply: Reply, prompt_tokens: int, tokens: int) -> None:
        c = self.counters
        c["preemptions"] += reply.preempted
        c["queries"] += prompt_tokens
        c["hits"] += reply.prefix_hit_tokens
        c["queue_sum"] += reply.queue_s
        c["queue_count"] += 1
        c["prompt"] += prompt_tokens
        c["generation"] += tokens
        c["length"] += 1

    def metrics_text(self) -> str:
        c, lbl = self.counters, f'model_name="{MODEL}"'
        return "\n".join([
            "# TYPE kvserve:num_preemptions_total counter",
            f"kvserve:num_preemptions_total{{{lbl}}} {c['preemptions']}",
            "# TYPE kvserve:prefix_cache_queries_total counter",
            f"kvserve:prefix_cache_queries_total{{{lbl}}} {c['queries']}",
            "# TYPE kvserve:prefix_cache_hits_total counter",
            f"kvserve:prefix_cache_hits_total{{{lbl}}} {c['hits']}",
            "# TYPE kvserve:request_queue_time_seconds histogram",
            f'kvserve:request_queue_time_seconds_bucket{{le="+Inf",{lbl}}} {c["queue_count"]}',
            f"kvserve:request_queue_time_seconds_sum{{{lbl}}} {c['queue_sum']}",
            f"kvserve:request_queue_time_seconds_count{{{lbl}}} {c['queue_count']}",
            "# TYPE kvserve:prompt_tokens_total counter",
            f"kvserve:prompt_tokens_total{{{lbl}}} {c['prompt']}",
            "# TYPE kvserve:generation_tokens_total counter",
            f"kvserve:generation_tokens_total{{{lbl}}} {c['generation']}",
            "# TYPE kvserve:request_success_total counter",
            f'kvserve:request_success_total{{finished_reason="length",{lbl}}} {c["length"]}',
            f'kvserve:request_success_total{{finished_reason="stop",{lbl}}} {c["stop"]}',
            "# TYPE kvserve:num_requests_running gauge",
            f"kvserve:num_requests_running{{{lbl}}} {self.in_flight}",
            "",
        ])


@pytest.fixture
def fake_server():
    """Factory: `with fake_server(lambda n, body: {"ttft_s": 0.2}) as srv:` starts a fake server on a free
    loopback port; `srv.url` is its root."""
    return FakeOpenAIServer


@pytest.fixture
def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
