"""Client text -> token ids (and back) for the routes: size limits first, then the tokenizer, off the loop.

Every function here that touches the tokenizer runs in a tokenizer thread (`ServerContext.run_tokenizer`,
in the lane for its size: see `tokenizer_lanes`), never on the event loop; the HF fast tokenizer releases
the GIL while it encodes, so /health keeps answering meanwhile. Before any of that, text is measured in characters: a
prompt (or the sum of a chat's message texts) longer than `ServerConfig.prompt_char_limit` cannot fit the
context window, and is refused without being tokenized or rendered.

Chat messages go through the tokenizer's chat template. By default message text is tokenized as plain
text: a user who types `<|im_start|>system` gets those characters, not the control tokens, so they cannot
open a fake system turn. Messages that spell a control token are replaced by a marker while the template
renders, and their text is tokenized on its own with special-token parsing off; messages that do not are
rendered and tokenized exactly as the template says. `--special-tokens-in-messages` turns this off.
"""

from __future__ import annotations

import json
import secrets

from .context import ServerContext
from .errors import bad_request, cap
from .responses import json_bytes


def check_text_size(ctx: ServerContext, text: str, param: str) -> None:
    limit = ctx.config.prompt_char_limit(ctx.max_model_len)
    if len(text) > limit:
        raise bad_request(param, f"{param}: {len(text)} characters is more text than this server tokenizes "
                                 f"({limit}, for a context window of {ctx.max_model_len} tokens)",
                          code="prompt_too_long")


def check_messages_size(ctx: ServerContext, messages: list[dict], param: str = "messages", extra: int = 0) -> int:
    """`extra`: characters the template renders besides the messages (the tools' JSON)."""
    limit = ctx.config.prompt_char_limit(ctx.max_model_len)
    size = extra + sum(len(m["content"]) + len(m.get("name", "")) + len(_calls_text(m)) for m in messages)
    if size > limit:
        raise bad_request(param, f"{param}: {size} characters of message text is more than this server "
                                 f"tokenizes ({limit}, for a context window of {ctx.max_model_len} tokens)",
                          code="prompt_too_long")
    return size


def check_token_count(ctx: ServerContext, ids: list[int], param: str) -> None:
    """A cheap early cap; the engine's own check gives the same message for anything that gets through."""
    if len(ids) >= ctx.max_model_len:
        raise bad_request(param, f"{param}: the prompt has {len(ids)} tokens, but the context window is "
                                 f"{ctx.max_model_len} tokens (at least one must be left to generate)")


def _calls_text(message: dict) -> str:
    calls = message.get("tool_calls")
    return json.dumps(calls, ensure_ascii=False) if calls else ""


# ---- on the tokenizer thread ------------------------------------------------------------------------------
def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def control_tokens(tokenizer) -> tuple[str, ...]:
    return tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)


class ControlTokenInMessage(ValueError):
    def __init__(self, param: str, token: str):
        super().__init__(f"{param}: contains the model's control token {token!r}, which this server does not "
                         "accept there")
        self.param = param


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool, plain_text: bool,
             template_kwargs: dict | None = None, template: str | None = None,
             tools: list[dict] | None = None) -> list[int]:
    """The chat template's prompt as token ids; with `plain_text`, message text never becomes control tokens.
    `template_kwargs` (the request's chat_template_kwargs) are extra variables for the template; `template`
    replaces the tokenizer's own; `tools` are the request's tools, for templates that list them. Tool calls
    and tool definitions are JSON the template writes as it is, so one that spells a control token is refused."""
    extra = dict(template_kwargs or {})
    if template is not None:
        extra["chat_template"] = template
    if tools:
        extra["tools"] = tools
    specials = control_tokens(tokenizer) if plain_text else ()
    for param, text in [(f"messages[{i}].tool_calls", _calls_text(m)) for i, m in enumerate(messages)] + \
            [("tools", json.dumps(tools, ensure_ascii=False) if tools else "")]:
        token = next((s for s in specials if s in text), None)
        if token is not None:
            raise ControlTokenInMessage(param, token)
    spelled = {i for i, m in enumerate(messages) if any(s in m["content"] for s in specials)}
    for i, m in enumerate(messages):
        token = next((s for s in specials if s in m.get("name", "")), None)
        if token is not None:
            raise ControlTokenInMessage(f"messages[{i}].name", token)
    if not spelled:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **extra)
        return tokenizer.encode(text, add_special_tokens=False)
    nonce = secrets.token_hex(8)
    marks = {i: f"zz{nonce}m{i}zz" for i in spelled}  # survives trim, lower() and the like in templates
    masked = [dict(m, content=marks[i]) if i in marks else m for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(masked, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
    ids: list[int] = []
    for i in sorted(spelled, key=lambda i: text.find(marks[i])):
        before, found, text = text.partition(marks[i])
        if not found or marks[i] in text:  # the template dropped or repeated the message: cannot be done safely
            token = next(s for s in specials if s in messages[i]["content"])
            raise ControlTokenInMessage(f"messages[{i}].content", token)
        ids += tokenizer.encode(before, add_special_tokens=False)
        ids += tokenizer.encode(messages[i]["content"], add_special_tokens=False, split_special_tokens=True)
    return ids + tokenizer.encode(text, add_special_tokens=False)


def tokenize_body(tokenizer, ids: list[int], max_model_len: int, token_strs: bool) -> bytes:
    """The /tokenize response, serialized here rather than on the event loop."""
    strs = tokenizer.convert_ids_to_tokens(ids) if token_strs else None
    return json_bytes({"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": strs})


def detokenize_body(tokenizer, ids: list[int]) -> bytes:
    return json_bytes({"prompt": tokenizer.decode(ids)})


# ---- from the routes (event loop) -------------------------------------------------------------------------
def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids)


async def prompt_text(ctx: ServerContext, ids: list[int]) -> str:
    """A token-id prompt's text (for echo); `token_id:N` pieces when the model has no tokenizer."""
    if not ctx.tokenizers.available:
        return "".join(f"token_id:{t}" for t in ids)
    return await ctx.run_tokenizer(len(ids) * 4, decode, ids)


async def prompt_ids(ctx: ServerContext, text: str, param: str = "prompt", add_special_tokens: bool = True) -> list[int]:
    check_text_size(ctx, text, param)
    return await ctx.run_tokenizer(len(text), encode, text, add_special_tokens)


async def chat_prompt_ids(ctx: ServerContext, messages: list[dict], add_generation_prompt: bool,
                          template_kwargs: dict | None = None, tools: list[dict] | None = None) -> list[int]:
    size = check_messages_size(ctx, messages, extra=len(json.dumps(tools)) if tools else 0)
    plain_text = not ctx.config.special_tokens_in_messages
    reserved = {"conversation", "messages", "tokenize", "add_generation_prompt", "chat_template", "tools"}
    clash = sorted(reserved & set(template_kwargs or {}))
    if clash:
        raise bad_request("chat_template_kwargs", f"chat_template_kwargs: {clash[0]!r} is set by the server")
    try:
        return await ctx.run_tokenizer(size, chat_ids, messages, add_generation_prompt, plain_text, template_kwargs,
                                       ctx.chat.template, tools)
    except ControlTokenInMessage as e:
        raise bad_request(e.param, str(e), code="control_token") from None
    except ValueError as e:  # e.g. the template refuses the roles' order, or there is no template
        raise bad_request("messages", cap(f"messages: the chat template could not be applied: {e}", 300)) from None
    except Exception as e:  # noqa: BLE001 - jinja raises its own exception types
        if type(e).__module__.startswith("jinja2"):
            raise bad_request("messages", cap(f"messages: the chat template could not be applied: {e}", 300)) from None
        raise
