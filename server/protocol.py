"""What clients may send: pydantic models of the request bodies (OpenAI fields plus vLLM's extras).

Models are strict (no "1" -> 1, no 1 -> True), reject NaN/Infinity and refuse fields they do not declare:
an ignored field would silently change what the client gets. Fields that kvserve knows but has not built
yet are named in `unsupported.py` (a neutral value such as `echo: false` is accepted there). Fields whose
JSON type is a union (`prompt`, `stop`, message `content`) are typed `Any` and checked by validators, so an
error names the field itself rather than one of the union's arms; `WithJsonSchema` gives them their true
schema in the OpenAPI document. Range checks of sampling parameters live in one place,
`engine.SamplingParams`; the `minimum`/`maximum` here only document them (schemathesis sends values just
outside them and checks that they are refused: tests/server/test_schemathesis.py).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from engine.sampling_params import (MAX_LOGPROBS, MAX_N, MAX_PROMPT_LOGPROBS, MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS,
                                    MAX_STOP_TOKEN_IDS)

from .config import MAX_CHAT_MESSAGES, MAX_PROMPTS
from .unsupported import drop_neutral

_STR = {"type": "string"}
_NULL = {"type": "null"}
# "x-" marks are filled in by openapi.py once the model is loaded: the vocabulary, the context window, the name.
_TOKEN_ID = {"type": "integer", "minimum": 0, "x-token-id": True}
_TOKEN_IDS = {"type": "array", "items": _TOKEN_ID, "minItems": 1, "x-prompt-length": True}
_CONTEXT_BOUND = {"x-context-bound": True}
_SERVED_MODEL = {"x-served-model": True}
_STOP = {"anyOf": [{**_STR, "minLength": 1, "maxLength": MAX_STOP_STRING_CHARS},
                   {"type": "array", "maxItems": MAX_STOP_STRINGS,
                    "items": {**_STR, "minLength": 1, "maxLength": MAX_STOP_STRING_CHARS}}, _NULL]}
_PROMPT = {"anyOf": [{**_STR, "minLength": 1}, _TOKEN_IDS,
                     {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": {**_STR, "minLength": 1}},
                     {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": _TOKEN_IDS}]}
_TEXT_PART = {"type": "object", "additionalProperties": False, "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": _STR}}
_CONTENT = {"anyOf": [_STR, {"type": "array", "items": _TEXT_PART}, _NULL]}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _range(default: Any, description: str | None = None, **bounds: float) -> Any:
    """A field whose range is checked by the engine and documented here."""
    return Field(default, description=description, json_schema_extra=bounds or None)


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise ValueError("must be a string or a list of strings")


class StrictModel(BaseModel):
    """Strict types, finite numbers, no undeclared fields (neutral not-yet-supported values dropped)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_neutral_unsupported(cls, data: Any) -> Any:
        return drop_neutral(data, cls.model_fields.keys())


class StreamOptions(StrictModel):
    include_usage: bool = False


_SCHEMA_OBJECT = {"type": "object"}
_JSON_SPEC = {"anyOf": [{"type": "object"}, {"type": "string"}, {"type": "null"}]}


class JsonSchemaFormat(StrictModel):
    name: str = "response"
    description: str | None = None
    schema_: Annotated[dict | None, WithJsonSchema({"anyOf": [_SCHEMA_OBJECT, {"type": "null"}]})] = \
        Field(None, alias="schema")
    strict: bool | None = None  # the output always follows the schema; strict or not changes nothing


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsField(StrictModel):
    """vLLM's `structured_outputs` object (the subset kvserve implements: the constraint itself)."""

    json_: Annotated[Any, WithJsonSchema(_JSON_SPEC)] = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class StructuredFields(StrictModel):
    """The structured-output fields, shared by /v1/completions and /v1/chat/completions (mapped to one engine
    constraint by `structured.structured_spec`)."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None
    guided_json: Annotated[Any, WithJsonSchema(_JSON_SPEC)] = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

class SamplingFields(StructuredFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = Field(None, description="the served model's name (optional)", json_schema_extra=_SERVED_MODEL)
    n: int = _range(1, "choices to generate", minimum=1, maximum=MAX_N)
    temperature: float = _range(1.0, "0 = greedy (so is anything below 1e-5)", minimum=0, maximum=2)
    top_p: float = _range(1.0, None, exclusiveMinimum=0, maximum=1)
    presence_penalty: float = _range(0.0, None, minimum=-2, maximum=2)
    frequency_penalty: float = _range(0.0, None, minimum=-2, maximum=2)
    seed: int | None = _range(None, "choice i of n uses seed + i", minimum=-(2**63), maximum=2**63 - 1)
    stop: Annotated[Any, WithJsonSchema(_STOP)] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="an end-user id; accepted and not used")
    # vLLM extras
    top_k: int = _range(0, "-1 or 0 = off", minimum=-1)
    min_p: float = _range(0.0, None, minimum=0, maximum=1)
    repetition_penalty: float = _range(1.0, None, exclusiveMinimum=0)
    min_tokens: int = _range(0, "EOS and stop tokens are forbidden until this many tokens exist", minimum=0)
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[int] | None, WithJsonSchema(
        {"anyOf": [{"type": "array", "maxItems": MAX_STOP_TOKEN_IDS, "items": _TOKEN_ID}, _NULL]})] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[str, float] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    cache_salt: str | None = Field(None, max_length=256, description="prefix-cache isolation: only requests with "
                                                                    "the same salt share cached blocks")
    prompt_logprobs: int | None = _range(None, "logprobs of every prompt token, with this many alternatives "
                                               "(not with stream)", minimum=0, maximum=MAX_PROMPT_LOGPROBS)

    @field_validator("logit_bias", mode="after")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and not all(k.isascii() and k.isdigit() and len(k) < 12 for k in value):
            raise ValueError("keys must be token ids written as decimal strings")
        return value

    def logit_bias_ids(self) -> dict[int, float] | None:
        return None if self.logit_bias is None else {int(k): v for k, v in self.logit_bias.items()}

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> list[str]:
        return _stop_list(value)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _prompt_list(value: Any) -> list[str | list[int]]:
    """OpenAI's four shapes -> a list of prompts: a string, a list of token ids, a list of strings, or a list
    of token-id lists."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise ValueError("must not be empty" if isinstance(value, list) else
                         "must be a string, a list of token ids, a list of strings or a list of token-id lists")
    if all(_is_int(t) for t in value):
        return [value]
    if len(value) > MAX_PROMPTS:
        raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(value)}")
    if all(isinstance(p, str) for p in value):
        return value
    if all(isinstance(p, list) for p in value):
        for i, p in enumerate(value):
            if not p or not all(_is_int(t) for t in p):
                raise ValueError(f"prompt {i}: must be a non-empty list of token ids")
        return value
    raise ValueError("must be a string, a list of token ids, a list of strings or a list of token-id lists "
                     "(not a mix)")


class CompletionRequest(SamplingFields):
    prompt: Annotated[Any, WithJsonSchema(_PROMPT)]
    max_tokens: int | None = _range(16, "null = up to the context window; 0 only with echo or prompt_logprobs",
                                    minimum=0, **_CONTEXT_BOUND)
    logprobs: int | None = _range(None, "alternatives per token", minimum=0, maximum=MAX_LOGPROBS)
    echo: bool = Field(False, description="the prompt's text (and, with logprobs, its tokens' logprobs) before "
                                          "each choice's completion")
    best_of: int | None = Field(None, description="only null or equal to n")

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> list[str | list[int]]:
        return _prompt_list(value)


class FunctionCall(StrictModel):
    name: str
    arguments: str = Field(description="a JSON object, as text")

    @field_validator("arguments", mode="after")
    @classmethod
    def _check_arguments(cls, value: str) -> str:
        try:
            ok = isinstance(json.loads(value), dict)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("must be a JSON object written as a string")
        return value


class MessageToolCall(StrictModel):
    """A call an assistant made earlier in the conversation (OpenAI's `tool_calls` entry)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Any, WithJsonSchema(_CONTENT)] = ""
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = Field(None, description="assistant messages: the calls it made")
    tool_call_id: str | None = Field(None, description="tool messages: the call this is the result of")

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> str:
        """A string, or a list of text parts ({"type": "text", "text": ...}) which are joined."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = []
            for part in value:
                if not (isinstance(part, dict) and part.keys() == {"type", "text"} and part["type"] == "text"
                        and isinstance(part["text"], str)):
                    raise ValueError("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported")
                texts.append(part["text"])
            return "".join(texts)
        raise ValueError("must be a string or a list of text parts")

    @field_validator("tool_calls", mode="after")
    @classmethod
    def _only_assistant_calls(cls, value: list | None, info) -> list | None:
        if value is not None and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return value

    @field_validator("tool_call_id", mode="after")
    @classmethod
    def _only_tool_results(cls, value: str | None, info) -> str | None:
        if value is not None and info.data.get("role") != "tool":
            raise ValueError("only tool messages carry a tool_call_id")
        return value

    def template_input(self) -> dict:
        """The message as the chat template sees it (`name` only when given: templates test for it). Tool-call
        arguments are handed over as objects, as HF chat templates expect (`arguments | tojson`)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments (an object)")
    strict: bool | None = None  # constrained calls always follow the schema; strict or not changes nothing


class ChatTool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


_TOOL_CHOICE = {"anyOf": [{"enum": ["none", "auto", "required"]},
                          {"type": "object", "additionalProperties": False, "required": ["type", "function"],
                           "properties": {"type": {"const": "function"},
                                          "function": {"type": "object", "required": ["name"],
                                                       "additionalProperties": False,
                                                       "properties": {"name": _STR}}}}, _NULL]}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    max_tokens: int | None = _range(None, "legacy name of max_completion_tokens", minimum=1, **_CONTEXT_BOUND)
    max_completion_tokens: int | None = _range(None, "null = up to the context window", minimum=1,
                                               **_CONTEXT_BOUND)
    logprobs: bool = False
    top_logprobs: int | None = _range(None, "needs logprobs: true", minimum=0, maximum=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="extra variables for the chat template "
                                                                         "(e.g. enable_thinking)")
    tools: list[ChatTool] | None = Field(None, max_length=128)
    tool_choice: Annotated[Any, WithJsonSchema(_TOOL_CHOICE)] = Field(
        None, description='"none", "auto" (the default with tools), "required", or {"type": "function", '
                          '"function": {"name": ...}}')
    parallel_tool_calls: bool = True

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _check_tool_choice(cls, value: Any) -> str | dict | None:
        if value is None or value in ("none", "auto", "required"):
            return value
        if (isinstance(value, dict) and value.keys() == {"type", "function"} and value["type"] == "function"
                and isinstance(value["function"], dict) and value["function"].keys() == {"name"}
                and isinstance(value["function"]["name"], str)):
            return value
        raise ValueError('must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')

    def chat_messages(self) -> list[dict]:
        return [m.template_input() for m in self.messages]


class TokenizeRequest(StrictModel):
    """vLLM's /tokenize: either `prompt` (text) or `messages` (chat template applied)."""

    model: str | None = Field(None, json_schema_extra=_SERVED_MODEL)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_CHAT_MESSAGES)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(StrictModel):
    model: str | None = Field(None, json_schema_extra=_SERVED_MODEL)
    tokens: Annotated[list[int], WithJsonSchema({"type": "array", "items": _TOKEN_ID, "x-context-length": True})]
