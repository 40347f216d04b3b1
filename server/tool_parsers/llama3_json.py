"""Llama 3.x JSON tool calls: the whole answer is one or more JSON objects, optionally after `<|python_tag|>`:

    {"name": "get_weather", "parameters": {"city": "Paris"}}
    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}

Llama 3.1-3.3's templates ask for exactly this (`parameters`, not `arguments`; several calls separated by
`;`). An answer that starts with `{` (or has `<|python_tag|>`) is held back until the output ends, then
parsed as a sequence of calls; if any part of it is not a call, all of it is returned as content. Text
before `<|python_tag|>` is content. (`<|python_tag|>` is a special token: with skip_special_tokens it never
reaches the text, and the answer then simply starts with `{`.)
"""

from __future__ import annotations

import json

from .base import ContentGate, Piece, ToolCall, ToolParser, call_from_object, partial_suffix

TAG = "<|python_tag|>"


def parse_calls(text: str) -> list[ToolCall] | None:
    """`text` as a `;`-separated sequence of call objects, or None if it is anything else."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos == n:
            return calls or None
        if calls:
            if text[pos] != ";":
                return None
            pos += 1
            while pos < n and text[pos].isspace():
                pos += 1
            if pos == n:
                return calls
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        call = call_from_object(obj, "parameters") or call_from_object(obj, "arguments")
        if call is None:
            return None
        calls.append(call)


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    args_key = "parameters"
    separator = "; "

    @staticmethod
    def call_text(name: str) -> tuple[str, str]:
        return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "parameters": ', "}"

    def __init__(self) -> None:
        self._pending = ""
        self._json = False  # inside the call part: held until the end
        self._tagged = False  # the call part came after <|python_tag|>
        self._gate = ContentGate()

    def _feed(self, text: str) -> Piece:
        self._pending += text
        if self._json:
            return Piece()
        tag = self._pending.find(TAG)
        if tag >= 0:
            before = self._pending[:tag]
            self._pending, self._json, self._tagged = self._pending[tag + len(TAG):], True, True
            return Piece(self._gate.text(before))
        stripped = self._pending.lstrip()
        if not stripped:
            return Piece()
        if not self._gate.started and stripped.startswith("{"):  # the answer opens with a call
            self._pending, self._json = stripped, True
            return Piece()
        keep = partial_suffix(self._pending, TAG)
        ready, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
        return Piece(self._gate.text(ready))

    def _finish(self) -> Piece:
        pending, self._pending = self._pending, ""
        if not self._json:
            return Piece(self._gate.text(pending))
        calls = parse_calls(pending)
        if calls is None:
            return Piece(self._gate.text((TAG if self._tagged else "") + pending))
        self._gate.drop_held()
        return Piece("", tuple(calls))
