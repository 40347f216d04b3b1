"""The chat template the server renders with, and the parsers its output goes through.

    --chat-template PATH_OR_STRING   a file (or a name kvserve ships, see `SHIPPED`) or the Jinja text itself;
                                     replaces the model's own template for every chat request and /tokenize
    --tool-call-parser NAME          hermes | llama3_json; default: detected from the template (tool_parsers)
    --reasoning-parser NAME          qwen3 | deepseek_r1; default: none (reasoning stays in the content)

The template is resolved and parsed by Jinja when the flags are read (a typo is a startup error, not a 400
on every request); the tool-call parser is detected once the model's tokenizer is loaded (`ChatSetup`).
A chat template sent with a request (vLLM's `chat_template` field) is refused: it would run client Jinja.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .tool_parsers import detect_tool_parser

logger = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"
# Names for the templates kvserve ships (also usable as paths).
SHIPPED = {"smollm2-tools": TEMPLATES / "smollm2_tool_use.jinja"}


def load_chat_template(value: str) -> str:
    """`value` as template text: a shipped name, a file's path, or Jinja itself. ValueError naming the flag."""
    if value in SHIPPED:
        return SHIPPED[value].read_text()
    if "{{" in value or "{%" in value:
        text = value
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"chat_template: {value!r} is neither a file, a shipped template "
                             f"({', '.join(SHIPPED)}), nor Jinja text")
        text = path.read_text()
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat_template: not a valid Jinja template: {e.message} (line {e.lineno})") from None
    return text


@dataclass(frozen=True)
class ChatSetup:
    template: str | None  # the --chat-template text; None: the tokenizer's own
    tool_parser: str | None  # None: tool calls cannot be parsed (tool_choice auto/required/named is a 400)
    reasoning_parser: str | None


def chat_setup(config, tokenizer) -> ChatSetup:
    """The server's `ChatSetup` from its `ServerConfig` and the model's tokenizer (None for none)."""
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(own, dict):  # several named templates: the default one renders chats
        own = own.get("default")
    template = config.chat_template or own
    parser = config.tool_call_parser or detect_tool_parser(template)
    how = "given" if config.tool_call_parser else ("detected from the chat template" if parser else "none")
    logger.info("Chat: %s template; tool-call parser: %s (%s); reasoning parser: %s",
                "the --chat-template" if config.chat_template else "the model's", parser or "none", how,
                config.reasoning_parser or "none")
    return ChatSetup(config.chat_template, parser, config.reasoning_parser)
