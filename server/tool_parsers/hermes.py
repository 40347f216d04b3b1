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

from .base import ContentGate, Piece, ToolCall, ToolParser, call_from_json, partial_suffix

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"
    args_key = "arguments"
    separator = "\n"  # between two calls, in constrained output

    @staticmethod
    def call_text(name: str) -> tuple[str, str]:
        """The text around a call's arguments, as constrained output writes it."""
        return OPEN + '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ', "}\n" + CLOSE

    def __init__(self) -> None:
        self._pending = ""
        self._in_call = False
        self._gate = ContentGate()

    def _feed(self, text: str) -> Piece:
        self._pending += text
        content: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if self._in_call:
                end = self._pending.find(CLOSE)
                if end < 0:
                    break
                body, self._pending = self._pending[:end], self._pending[end + len(CLOSE):]
                self._in_call = False
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
        return Piece("".join(content), tuple(calls))

    def _finish(self) -> Piece:
        content: list[str] = []
        calls: list[ToolCall] = []
        if self._in_call:
            self._close(self._pending, content, calls, closed=False)
        else:
            content.append(self._gate.text(self._pending))
        self._pending, self._in_call = "", False
        return Piece("".join(content), tuple(calls))

    def _close(self, body: str, content: list[str], calls: list[ToolCall], closed: bool) -> None:
        call = call_from_json(body, self.args_key)
        if call is not None:
            self._gate.drop_held()
            calls.append(call)
        else:
            content.append(self._gate.text(OPEN + body + (CLOSE if closed else "")))
