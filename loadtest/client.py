"""One streaming request -> one `RequestRecord`.

The request asks for a stream with `stream_options.include_usage`, so the last chunk carries the token
counts. Timestamps are taken with `time.perf_counter()` as each SSE line is read:

    send ──► [headers] ── first token chunk ── chunk ── ... ── last token chunk ── usage ── [DONE]
    │                     │◄──── ITL gaps between consecutive token chunks ────►│
    │◄────── TTFT ───────►│
    │◄─────────────────────────── E2EL ────────────────────────────────────────►│

A token chunk is a chunk whose first choice carries generated text (completions `text`, chat
`delta.content`, `delta.reasoning_content` or `delta.tool_calls`). A chat delta that only announces the
role and a chunk that only carries the finish reason are not token chunks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from loadtest.config import Target
from loadtest.records import RequestRecord
from loadtest.workload import RequestSpec

MAX_ERROR_CHARS = 500


def build_payload(target: Target, model: str, spec: RequestSpec) -> dict:
    """The JSON body of one streaming request."""
    body: dict = {
        "model": model,
        "max_tokens": spec.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.ignore_eos:
        body["ignore_eos"] = True
    if target.endpoint == "completions":
        body["prompt"] = spec.payload_prompt()
    else:
        body["messages"] = [{"role": "user", "content": spec.payload_prompt()}]
    return body


def headers_for(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


def is_token_chunk(choice: dict, chat: bool) -> bool:
    """Whether a chunk's first choice carries generated tokens (see the module docstring)."""
    if chat:
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            return True
        piece = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        if piece:
            return True
        empty_token = delta.get("content") == "" and "role" not in delta
    else:
        piece = choice.get("text")
        if piece:
            return True
        empty_token = piece == ""
    # An empty piece can still stand for a token (e.g. half of a multi-byte character being held back).
    return empty_token and choice.get("finish_reason") is None


@dataclass
class _Stream:
    """What has been read so far from one stream."""

    first: float | None = None
    last: float | None = None
    chunks: int = 0
    itl: list[float] = field(default_factory=list)
    usage: dict | None = None

    def token_chunk(self, now: float) -> None:
        if self.first is None:
            self.first = now
        else:
            self.itl.append(now - self.last)  # type: ignore[operator]
        self.last = now
        self.chunks += 1


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


async def send_request(http: httpx.AsyncClient, target: Target, model: str, spec: RequestSpec,
                       index: int, run_start: float, scheduled_s: float) -> RequestRecord:
    """Send `spec`, read its whole stream, and say what happened. Never raises for a failed request."""
    chat = target.endpoint == "chat"
    base = dict(index=index, scheduled_s=scheduled_s, max_tokens=spec.max_tokens, prompt_len=spec.prompt_len)
    st = _Stream()
    body = json.dumps(build_payload(target, model, spec)).encode()  # encoded before the clock starts
    headers = {"Content-Type": "application/json", **headers_for(target)}
    sent = time.perf_counter()
    base["sent_s"] = sent - run_start
    status = None
    try:
        async with http.stream("POST", target.url, content=body, headers=headers) as resp:
            status = resp.status_code
            if status != 200:
                text = (await resp.aread()).decode("utf-8", "replace")
                return RequestRecord(**base, ok=False, status_code=status, failure=str(status), error=_short(text))
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data:"):
                    continue  # blank separators, comments (":"), event/id fields
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    return RequestRecord(**base, ok=False, status_code=status, failure="stream_error",
                                         error=_short(f"expected a JSON object, got {data}"))
                if chunk.get("error"):
                    return RequestRecord(**base, ok=False, status_code=status, failure="stream_error",
                                         error=_short(json.dumps(chunk["error"])))
                choices = chunk.get("choices") or []
                if choices and is_token_chunk(choices[0], chat):
                    st.token_chunk(now)
                if chunk.get("usage"):
                    st.usage = chunk["usage"]
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        return RequestRecord(**base, ok=False, status_code=status, failure=type(e).__name__,
                             error=_short(str(e) or type(e).__name__))
    if st.first is None:
        return RequestRecord(**base, ok=False, status_code=status, failure="no_output",
                             error="the stream ended without a token")
    usage = st.usage or {}
    from_usage = isinstance(usage.get("completion_tokens"), int)
    return RequestRecord(
        **base, ok=True, status_code=status,
        ttft_s=st.first - sent, e2el_s=st.last - sent, itl_s=tuple(st.itl),  # type: ignore[operator]
        prompt_tokens=usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None,
        output_tokens=usage["completion_tokens"] if from_usage else st.chunks,
        output_tokens_source="usage" if from_usage else "chunks",
    )
