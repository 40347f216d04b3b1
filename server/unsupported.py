"""Request fields that kvserve knows but does not implement yet: the one list to edit when one is built.

kvserve refuses every field it does not know (400, `code: unknown_parameter`) instead of ignoring it, since
an ignored field silently changes what the client gets. Fields that OpenAI or vLLM clients send and that
kvserve has not built yet are listed here so that their refusal says what they are
(`code: unsupported_parameter`). A value listed as neutral means "off" (`echo: false`, `functions: []`,
`function_call: "none"`): it asks for the behaviour kvserve already has, so it is accepted and dropped.

To implement one of these fields: add it to the request model in `protocol.py` (and its handling), then
delete its line here; a field that a request model declares is never looked up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unsupported:
    what: str  # what the field asks for, in a few words
    neutral: tuple[Any, ...] = ()  # values besides null that mean "off"


_FUNCTIONS = "the deprecated functions API (use tools and tool_choice)"

NOT_YET_SUPPORTED: dict[str, Unsupported] = {
    # OpenAI
    "echo": Unsupported("echo on chat completions (it is a /v1/completions field)", (False,)),
    "suffix": Unsupported("suffix (insertion)", ("",)),
    "functions": Unsupported(_FUNCTIONS, ([],)),
    "function_call": Unsupported(_FUNCTIONS, ("none",)),
    "refusal": Unsupported("refusal messages"),
    "audio": Unsupported("audio"),
    "modalities": Unsupported("output modalities other than text", (["text"],)),
    "prediction": Unsupported("predicted outputs"),
    "reasoning_effort": Unsupported("reasoning_effort (no reasoning budgets; chat_template_kwargs "
                                    "{\"enable_thinking\": false} turns a model's thinking off)"),
    "verbosity": Unsupported("verbosity (a length hint for OpenAI's reasoning models)"),
    "prompt_cache_key": Unsupported("prompt_cache_key (prefix caching is automatic; cache_salt isolates it)"),
    "safety_identifier": Unsupported("safety_identifier (OpenAI's abuse monitoring; `user` is accepted)"),
    "web_search_options": Unsupported("web search"),
    "store": Unsupported("stored completions", (False,)),
    "metadata": Unsupported("metadata (for stored completions)"),
    "service_tier": Unsupported("service tiers", ("auto", "default")),
    # vLLM extensions
    "guided_decoding_backend": Unsupported("a structured-output backend other than xgrammar", ("xgrammar", "auto")),
    "guided_whitespace_pattern": Unsupported("guided_whitespace_pattern (JSON is generated without free whitespace)"),
    "chat_template": Unsupported("a chat template sent with the request (client-supplied Jinja; the server's "
                                 "--chat-template sets it)"),
    "continue_final_message": Unsupported("continue_final_message", (False,)),
    "documents": Unsupported("documents for the chat template"),
    "use_beam_search": Unsupported("beam search", (False,)),
    "length_penalty": Unsupported("beam search (length_penalty)", (1.0,)),
    "allowed_token_ids": Unsupported("allowed_token_ids"),
    "bad_words": Unsupported("bad_words", ([],)),
    "logits_processors": Unsupported("logits_processors"),
    "truncate_prompt_tokens": Unsupported("prompt truncation"),
    "return_tokens_as_token_ids": Unsupported("return_tokens_as_token_ids", (False,)),
    "priority": Unsupported("request priorities", (0,)),
    "add_special_tokens": Unsupported("add_special_tokens on generation routes (it is a /tokenize field)"),
    "spaces_between_special_tokens": Unsupported("spaces_between_special_tokens", (True,)),
    "return_token_ids": Unsupported("return_token_ids (token ids in the response)", (False,)),
    "request_id": Unsupported("client-chosen request ids"),
    "mm_processor_kwargs": Unsupported("multimodal inputs"),
    "kv_transfer_params": Unsupported("disaggregated prefill (KV transfer)"),
    "vllm_xargs": Unsupported("vllm_xargs (custom extension arguments)"),
}


def is_neutral(name: str, value: Any) -> bool:
    """Whether `value` for the not-yet-supported field `name` asks for nothing kvserve does not already do."""
    entry = NOT_YET_SUPPORTED.get(name)
    if entry is None:
        return False
    return value is None or any(type(value) is type(n) and value == n for n in entry.neutral)


def drop_neutral(data: Any, declared: set[str] | frozenset[str]) -> Any:
    """`data` without the not-yet-supported fields whose value is neutral (fields a model declares stay)."""
    if not isinstance(data, dict):
        return data
    drop = [k for k, v in data.items() if k not in declared and is_neutral(k, v)]
    return {k: v for k, v in data.items() if k not in drop} if drop else data


def refusal(name: str) -> tuple[str, str]:
    """(message tail, error code) for a field the request model does not declare."""
    entry = NOT_YET_SUPPORTED.get(name)
    if entry is not None:
        return f"{entry.what} is not supported by this server yet", "unsupported_parameter"
    return "unknown field; kvserve refuses fields it does not know rather than ignore them", "unknown_parameter"
