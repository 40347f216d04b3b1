"""Tool-call parsers, one small module per output format, chosen by `--tool-call-parser` or detected from
the chat template.

    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>    Qwen2.5, Qwen3, kvserve's SmolLM2 template
    llama3_json  {"name": ..., "parameters": {...}} (after <|python_tag|>)   Llama 3.1 / 3.2 / 3.3

Detection (when `--tool-call-parser` is not given) reads the chat template the server renders with: one
that writes `<tool_call>` is hermes; one that writes `<|python_tag|>` or asks for `"parameters"` JSON after
`<|start_header_id|>` is llama3_json; anything else has no parser, and a request that lets the model
choose (`tool_choice: "auto"`) is refused with a 400 naming `tool_choice`.
"""

from __future__ import annotations

from .base import CallDelta, Piece, ToolCall, ToolParser
from .hermes import HermesToolParser
from .llama3_json import Llama3JsonToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}


def detect_tool_parser(template: str | None) -> str | None:
    """The parser for the format a chat template asks the model to write tool calls in, or None."""
    if not template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and '"parameters"' in template):
        return "llama3_json"
    return None


__all__ = ["TOOL_PARSERS", "CallDelta", "HermesToolParser", "Llama3JsonToolParser", "Piece", "ToolCall", "ToolParser",
           "detect_tool_parser"]
