"""What the server answers, as pydantic models: the response half of the OpenAPI document.

The bodies themselves are built as plain dicts (`responses.py`, `routes_admin.py`), which is fast; these
models say what those dicts hold, field for field, and a test holds the two together: schemathesis
(tests/server/test_schemathesis.py) checks every response it gets, JSON bodies and each event of a stream,
against the document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "abort"]


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptTokensDetails(_Exact):
    cached_tokens: int = Field(description="prompt tokens found in the prefix cache")


class Usage(_Exact):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(_Exact):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for an echoed prompt's first token")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(_Exact):
    logprob: float
    rank: int | None = Field(description="the token's place in the vocabulary, 1 = most likely")
    decoded_token: str


PromptLogprobs = list[dict[str, PromptLogprob] | None]  # per prompt token (null for the first), by token id


class CompletionChoice(_Exact):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None
    stop_reason: str | int | None = Field(description="the stop string or stop token id that ended the choice")
    prompt_logprobs: PromptLogprobs | None = Field(None, description="with prompt_logprobs: this choice's prompt's")


class CompletionResponse(_Exact):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(_Exact):
    """One `data:` event of a completions stream (the last one, with include_usage, has no choices)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, description="present (null) in every chunk with include_usage")


class TopLogprob(_Exact):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Exact):
    content: list[TokenLogprob]


class ChatMessageOut(_Exact):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Exact):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None
    stop_reason: str | int | None


class ChatCompletionResponse(_Exact):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    prompt_logprobs: PromptLogprobs | None = Field(None, description="with prompt_logprobs")
    usage: Usage


class ChatDelta(_Exact):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Exact):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None
    stop_reason: str | int | None = None


class ChatCompletionChunk(_Exact):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(_Exact):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(_Exact):
    object: Literal["list"]
    data: list[ModelCard]


class Health(_Exact):
    status: Literal["loading", "ready", "draining", "failed"]


class TokenizeResponse(_Exact):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(_Exact):
    prompt: str


class DashboardState(_Exact):
    """GET /dashboard/state, what the page polls. Its two large parts are described in their own modules."""

    time: float
    model: str
    phase: Literal["loading", "ready", "draining", "failed"]
    max_model_len: int
    cache: dict[str, Any] = Field(description="a bounded snapshot of the block pool and the queues "
                                              "(engine/cache_view.py)")
    recent: dict[str, Any] = Field(description="the last minute: latencies, throughput, utilization "
                                               "(server/recent.py)")


class ErrorBody(_Exact):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Exact):
    """Every error, whatever its status: the OpenAI envelope."""

    error: ErrorBody
