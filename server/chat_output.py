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
from .tool_parsers import ToolCall, ToolParser


@dataclass(frozen=True)
class ChatParsing:
    reasoning: str | None = None  # a `reasoning.REASONING_PARSERS` kind, or None
    tool_parser: type[ToolParser] | None = None  # None: tool calls are not parsed (no tools, or tool_choice none)
    max_calls: int | None = None  # 1 when parallel_tool_calls is false

    @property
    def active(self) -> bool:
        return self.reasoning is not None or self.tool_parser is not None


@dataclass(frozen=True, slots=True)
class ChoiceOutput:
    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def __add__(self, other: "ChoiceOutput") -> "ChoiceOutput":
        return ChoiceOutput(self.reasoning + other.reasoning, self.content + other.content,
                            self.tool_calls + other.tool_calls)


class ChoiceParser:
    def __init__(self, parsing: ChatParsing):
        self._parsing = parsing
        self._reasoning = ReasoningParser(parsing.reasoning) if parsing.reasoning else None
        self._tools = parsing.tool_parser() if parsing.tool_parser else None
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
        elif piece is None:
            return ChoiceOutput()
        else:
            content, calls = piece.content, piece.tool_calls
        if self._parsing.max_calls is not None:
            calls = calls[:max(0, self._parsing.max_calls - self.num_calls)]
        self.num_calls += len(calls)
        return ChoiceOutput(content=content, tool_calls=calls)
