"""What a tool parser gives back, and the streaming machinery the parsers share.

A parser turns the model's text into content and tool calls, either all at once (`parse`, for a whole
response) or piece by piece (`feed` each new piece of text, then `finish`), and both give the same result:
`parse(text)` is literally `feed(text)` then `finish()`. A call is only handed out once it is complete and
its JSON is valid, because a call whose JSON turns out malformed is returned as plain content instead (a
stream cannot take back a call it has already sent). The one exception is a parser made with
`stream_arguments=True`, used when a grammar forces the calls (tool_choice `required` or a named function):
the JSON cannot turn out malformed, so the call's name and then its argument text are handed out as they
arrive (`CallDelta`s).

Content the parsers hand out loses its leading whitespace and the whitespace right before a call or at the
very end, so that `"Sure.\\n<tool_call>..."` gives content `"Sure."` whether streamed or not.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text
    id: str = field(default_factory=new_call_id)

    def body(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class CallDelta:
    """Part of a call whose arguments stream in pieces: the first of a call carries its id and name (and
    arguments ""), the later ones only argument text."""

    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Piece:
    """What one `feed` (or `finish`) hands out: content text and the calls completed in it (or, for a parser
    streaming arguments, the parts of calls)."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    deltas: tuple[CallDelta, ...] = ()


def call_from_json(text: str, args_key: str) -> ToolCall | None:
    """`{"name": str, args_key: {...}}` (the arguments may also be a JSON string holding an object) as a
    call; None when `text` is not exactly that."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return call_from_object(obj, args_key)


def call_from_object(obj: object, args_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get(args_key)
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict) or set(obj) - {"name", args_key}:
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the start of `tag` (what must be held back in case the
    next piece completes the tag)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ContentGate:
    """Content on its way out: drops leading whitespace and holds trailing whitespace until more text
    follows (whitespace before a call or at the end is dropped)."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def text(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        body = text.rstrip()
        if not body:
            self._held += text
            return ""
        out = self._held + body
        self._held = text[len(body):]
        return out

    @property
    def started(self) -> bool:
        return self._started

    def drop_held(self) -> None:
        self._held = ""


class ToolParser:
    """One choice's parser. Subclasses implement `_feed` and `_finish`; `parse` runs them over a whole text."""

    name = ""
    can_stream_arguments = False  # takes stream_arguments=True (see the module docstring)

    def feed(self, text: str) -> Piece:
        return self._feed(text)

    def finish(self) -> Piece:
        return self._finish()

    def parse(self, text: str) -> Piece:
        a, b = self.feed(text), self.finish()
        return Piece(a.content + b.content, a.tool_calls + b.tool_calls, a.deltas + b.deltas)

    def _feed(self, text: str) -> Piece:
        raise NotImplementedError

    def _finish(self) -> Piece:
        raise NotImplementedError
