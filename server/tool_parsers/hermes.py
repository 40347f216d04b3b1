"""Hermes-style tool calls, as Qwen2.5 / Qwen3 (and kvserve's SmolLM2 tool template) write them:

    Let me look that up.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
    <tool_call>
    {"name": "get_time", "arguments": {"tz": "CET"}}
    </tool_call>

Text outside the tags is content. A tag whose body is not `{"name": ..., "arguments": {...}}` stays in the
content as written. A call still open when the output ends (the model stopped before `</tool_call>`) counts
if its body is complete JSON. Streaming holds back text that may be the start of `<tool_call>` and
everything inside a call until it closes, so no half tag ever reaches the content.
"""

from __future__ import annotations

import json
import logging
import re

from .base import CallDelta, ContentGate, Piece, ToolCall, ToolParser, call_from_json, new_call_id, partial_suffix

logger = logging.getLogger(__name__)
OPEN, CLOSE = "<tool_call>", "</tool_call>"
# The head of a call as the forced-call grammar writes it (`call_text`), up to the arguments' first character.
HEAD = re.compile(r'\s*\{"name": "([A-Za-z0-9_-]+)", "arguments": ')


class HermesToolParser(ToolParser):
    name = "hermes"
    can_stream_arguments = True
    args_key = "arguments"
    separator = "\n"  # between two calls, in constrained output

    @staticmethod
    def call_text(name: str) -> tuple[str, str]:
        """The text around a call's arguments, as constrained output writes it."""
        return OPEN + '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ', "}\n" + CLOSE

    def __init__(self, stream_arguments: bool = False) -> None:
        self._pending = ""
        self._in_call = False
        self._gate = ContentGate()
        self._stream_args = stream_arguments
        self._args_at: int | None = None  # where the streamed call's arguments start in its body
        self._sent = 0  # characters of those arguments handed out so far

    def _feed(self, text: str) -> Piece:
        self._pending += text
        content: list[str] = []
        calls: list[ToolCall] = []
        deltas: list[CallDelta] = []
        while True:
            if self._in_call:
                end = self._pending.find(CLOSE)
                if self._stream_args:
                    visible = self._pending[:end] if end >= 0 else \
                        self._pending[:len(self._pending) - partial_suffix(self._pending, CLOSE)]
                    self._stream(visible, deltas)
                if end < 0:
                    break
                body, self._pending = self._pending[:end], self._pending[end + len(CLOSE):]
                self._in_call = False
                if self._stream_args:
                    self._end_streamed(body)
                else:
                    self._close(body, content, calls, closed=True)
            else:
                start = self._pending.find(OPEN)
                if start < 0:
                    keep = partial_suffix(self._pending, OPEN)
                    ready = self._pending[:len(self._pending) - keep]
                    self._pending = self._pending[len(ready):]
                    content.append(self._gate.text(ready))
                    break
                content.append(self._gate.text(self._pending[:start]))
                self._pending = self._pending[start + len(OPEN):]
                self._in_call = True
        return Piece("".join(content), tuple(calls), tuple(deltas))

    def _finish(self) -> Piece:
        content: list[str] = []
        calls: list[ToolCall] = []
        deltas: list[CallDelta] = []
        if self._in_call and self._stream_args:
            self._stream(self._pending, deltas)
            self._end_streamed(self._pending)
        elif self._in_call:
            self._close(self._pending, content, calls, closed=False)
        else:
            content.append(self._gate.text(self._pending))
        self._pending, self._in_call = "", False
        return Piece("".join(content), tuple(calls), tuple(deltas))

    def _stream(self, body: str, deltas: list[CallDelta]) -> None:
        """Hand out what is new of a forced call: its head once complete, then its argument text. The last
        `}` and trailing whitespace are held back until the call closes: they may be the end of the call
        object rather than of the arguments."""
        if self._args_at is None:
            m = HEAD.match(body)
            if m is None:
                return
            self._args_at, self._sent = m.end(), 0
            self._gate.drop_held()
            deltas.append(CallDelta("", new_call_id(), m.group(1)))
        args = body[self._args_at:].rstrip()
        if args.endswith("}"):
            args = args[:-1].rstrip()  # the call object's own brace, or (if more follows) sent with the next piece
        if len(args) > self._sent:
            deltas.append(CallDelta(args[self._sent:]))
            self._sent = len(args)

    def _end_streamed(self, body: str) -> None:
        if self._args_at is None or call_from_json(body, self.args_key) is None:
            # The grammar makes this impossible; if it happens anyway the client has a broken call to see.
            logger.warning("A forced tool call did not parse: %r", body[:200])
        self._args_at = None

    def _close(self, body: str, content: list[str], calls: list[ToolCall], closed: bool) -> None:
        call = call_from_json(body, self.args_key)
        if call is not None:
            self._gate.drop_held()
            calls.append(call)
        else:
            content.append(self._gate.text(OPEN + body + (CLOSE if closed else "")))
