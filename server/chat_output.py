"""A chat choice's text -> reasoning, content and tool calls: the reasoning parser, then the tool parser.

    model text --ReasoningParser--> reasoning_content
                       \\--> answer --ToolParser--> content, tool_calls

`ChatParsing` is what one request asks for (made by the route from the server's parsers and the request's
tools and tool_choice); `ChoiceParser` is one choice's running state, fed piece by piece while streaming or
the whole text at once for a full response (both give the same split; see `tool_parsers.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .reasoning import ReasoningParser
from .tool_parsers import CallDelta, ToolCall, ToolParser


@dataclass(frozen=True)
class ChatParsing:
    reasoning: str | None = None  # a `reasoning.REASONING_PARSERS` kind, or None
    tool_parser: type[ToolParser] | None = None  # None: tool calls are not parsed (no tools, or tool_choice none)
    max_calls: int | None = None  # 1 when parallel_tool_calls is false
    forced: bool = False  # a grammar forces the calls, so their arguments may stream in pieces

    @property
    def active(self) -> bool:
        return self.reasoning is not None or self.tool_parser is not None


@dataclass(frozen=True, slots=True)
class ChoiceOutput:
    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # complete calls
    call_deltas: tuple[tuple[int, CallDelta], ...] = ()  # (call index, part of it): forced calls, streaming

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls or self.call_deltas)

    def __add__(self, other: "ChoiceOutput") -> "ChoiceOutput":
        return ChoiceOutput(self.reasoning + other.reasoning, self.content + other.content,
                            self.tool_calls + other.tool_calls, self.call_deltas + other.call_deltas)


class ChoiceParser:
    def __init__(self, parsing: ChatParsing, streaming: bool = False):
        """`streaming`: the output goes out piece by piece (forced calls' arguments then stream too)."""
        self._parsing = parsing
        self._reasoning = ReasoningParser(parsing.reasoning) if parsing.reasoning else None
        tools = parsing.tool_parser
        if tools is not None and streaming and parsing.forced and tools.can_stream_arguments:
            self._tools = tools(stream_arguments=True)
        else:
            self._tools = tools() if tools is not None else None
        self.num_calls = 0

    def feed(self, text: str) -> ChoiceOutput:
        if self._reasoning is None:
            return self._answer(text, final=False)
        split = self._reasoning.feed(text)
        return ChoiceOutput(reasoning=split.reasoning) + self._answer(split.content, final=False)

    def finish(self) -> ChoiceOutput:
        if self._reasoning is None:
            return self._answer("", final=True)
        split = self._reasoning.finish()
        return ChoiceOutput(reasoning=split.reasoning) + self._answer(split.content, final=True)

    def parse(self, text: str) -> ChoiceOutput:
        return self.feed(text) + self.finish()

    def _answer(self, text: str, final: bool) -> ChoiceOutput:
        if self._tools is None:
            return ChoiceOutput(content=text)
        piece = self._tools.feed(text) if text else None
        if final:
            tail = self._tools.finish()
            content = (piece.content if piece else "") + tail.content
            calls = (piece.tool_calls if piece else ()) + tail.tool_calls
            deltas = (piece.deltas if piece else ()) + tail.deltas
        elif piece is None:
            return ChoiceOutput()
        else:
            content, calls, deltas = piece.content, piece.tool_calls, piece.deltas
        if self._parsing.max_calls is not None:
            calls = calls[:max(0, self._parsing.max_calls - self.num_calls)]
        self.num_calls += len(calls)
        indexed = []
        for d in deltas:  # forced calls: the grammar already bounds how many there are
            if d.name is not None:
                self.num_calls += 1
            indexed.append((self.num_calls - 1, d))
        return ChoiceOutput(content=content, tool_calls=calls, call_deltas=tuple(indexed))
