"""Engine deltas -> OpenAI response bodies: whole responses, stream chunks, usage and logprobs.

One formatter per request. `chunk(delta)` gives the stream chunk for one engine delta (or None when it
carries nothing a client could see); `ChoiceAccumulator` gathers a choice's deltas for a non-streaming
response, which `response(choices, usage)` turns into the final body. Completions and chat differ only in
the object names, where the text goes (`text` vs `message`/`delta`) and the logprobs format.

A choice's first delta carries what comes before its generated text: with `echo` (completions) the prompt's
text, and with logprobs the prompt tokens' logprobs (None for the first token, as OpenAI does); with
vLLM's `prompt_logprobs` the prompt tokens' logprobs in vLLM's format (per choice for completions, once at
the top of a chat response).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from engine.outputs import SequenceDelta, TokenLogprob

from .chat_output import ChatParsing, ChoiceOutput, ChoiceParser

MIN_LOGPROB = -9999.0  # JSON has no -inf; a token the sampler could never pick reports this
DONE_FRAME = b"data: [DONE]\n\n"


def json_bytes(obj) -> bytes:
    """A whole JSON body, as Starlette's JSONResponse writes it."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def sse_frame(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"


def finite_logprob(x: float) -> float:
    return x if math.isfinite(x) and x > MIN_LOGPROB else MIN_LOGPROB


class TokenTexts:
    """Token id -> its text (cached); `token_id:N` when the model has no tokenizer."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tok.decode([token_id]) if self._tok is not None else f"token_id:{token_id}"
            if len(self._cache) < 65536:
                self._cache[token_id] = text
        return text


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens found in the prefix cache (the last choice's, as vLLM reports)

    def body(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass
class ChoiceAccumulator:
    """One choice of a non-streaming response, built from its deltas."""

    index: int
    texts: list[str] = field(default_factory=list)
    logprobs: dict[str, list] | None = None
    num_output_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list | None = None

    def add(self, delta: SequenceDelta, logprobs: dict[str, list] | None) -> None:
        self.texts.append(delta.new_text)
        self.num_output_tokens = delta.num_output_tokens
        if logprobs is not None:
            if self.logprobs is None:
                self.logprobs = {k: [] for k in logprobs}
            for k, v in logprobs.items():
                self.logprobs[k].extend(v)
        if delta.finished:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason

    @property
    def text(self) -> str:
        return "".join(self.texts)


class Formatter:
    object_name = ""
    chunk_object_name = ""

    def __init__(self, request_id: str, model: str, created: int, logprobs: bool, texts: TokenTexts,
                 include_usage: bool = False):
        self.request_id, self.model, self.created = request_id, model, created
        self.want_logprobs, self.texts, self.include_usage = logprobs, texts, include_usage

    def _envelope(self, object_name: str, choices: list[dict]) -> dict:
        return {"id": self.request_id, "object": object_name, "created": self.created, "model": self.model,
                "choices": choices}

    want_prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: alternatives per prompt token

    def logprobs(self, delta: SequenceDelta) -> dict[str, list] | None:
        if not self.want_logprobs:
            return None
        return self._logprobs(delta.index, delta.new_logprobs or [])

    def add(self, choice: ChoiceAccumulator, delta: SequenceDelta) -> None:
        """A delta into its choice of a non-streaming response."""
        choice.add(delta, self.logprobs(delta))

    def chunk(self, delta: SequenceDelta) -> dict | None:
        logprobs = self.logprobs(delta)
        if not delta.new_text and not delta.finished and not (logprobs and any(logprobs.values())):
            return None  # a token whose text is held back (a possible stop string, half a character)
        body = self._envelope(self.chunk_object_name, [self._chunk_choice(delta, logprobs)])
        if self.include_usage:
            body["usage"] = None
        return body

    def prompt_logprobs_body(self, delta: SequenceDelta) -> list | None:
        """vLLM's format: per prompt token None (the first) or {token id: {logprob, rank, decoded_token}} with
        the token itself and its top alternatives."""
        if self.want_prompt_logprobs is None or delta.prompt_logprobs is None:
            return None
        k = self.want_prompt_logprobs
        body: list = []
        for lp in delta.prompt_logprobs:
            if lp is None:
                body.append(None)
                continue
            entry = {str(lp.token_id): {"logprob": finite_logprob(lp.logprob), "rank": lp.rank,
                                        "decoded_token": self.texts(lp.token_id)}}
            for rank, (t, v) in enumerate(list(lp.top.items())[:k], start=1):
                entry.setdefault(str(t), {"logprob": finite_logprob(v), "rank": rank, "decoded_token": self.texts(t)})
            body.append(entry)
        return body

    def usage_chunk(self, usage: Usage) -> dict:
        return dict(self._envelope(self.chunk_object_name, []), usage=usage.body())

    def response(self, choices: list[ChoiceAccumulator], usage: Usage) -> dict:
        return dict(self._envelope(self.object_name, [self._final_choice(c) for c in choices]), usage=usage.body())

    def _logprobs(self, index: int, lps: list[TokenLogprob]) -> dict[str, list]:
        raise NotImplementedError

    def _chunk_choice(self, delta: SequenceDelta, logprobs: dict | None) -> dict:
        raise NotImplementedError

    def _final_choice(self, c: ChoiceAccumulator) -> dict:
        raise NotImplementedError


class CompletionFormatter(Formatter):
    """/v1/completions: `text`; logprobs as {tokens, token_logprobs, top_logprobs, text_offset}."""

    object_name = chunk_object_name = "text_completion"

    def __init__(self, *args, n: int = 1, echo_texts: list[str] | None = None, echo_first_tokens: list[int] = (),
                 echo_k: int = 0, prompt_logprobs: int | None = None, **kwargs):
        """`echo_texts`: each prompt's text, prepended to its choices (`echo`); `echo_first_tokens`: each
        prompt's first token id, `echo_k`: alternatives of each echoed prompt token (echo with `logprobs`);
        `n`: choices per prompt."""
        super().__init__(*args, **kwargs)
        self.n, self.echo_texts, self.echo_k = n, echo_texts, echo_k
        self.echo_first_tokens = list(echo_first_tokens)
        self.want_prompt_logprobs = prompt_logprobs
        self._offsets: dict[int, int] = {}  # choice index -> characters of token text so far
        self._started: set[int] = set()  # choices whose first delta has gone out

    def _entries(self, index: int, lps, k: int | None = None, first_token: int | None = None) -> dict[str, list]:
        """OpenAI's logprobs object for `lps` (a None entry is an echoed first prompt token, `first_token`)."""
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        offset = self._offsets.get(index, 0)
        for lp in lps:
            if lp is None:
                text = self.texts(first_token) if first_token is not None else ""
                tokens.append(text)
                token_logprobs.append(None)
                top_logprobs.append(None)
            else:
                text = self.texts(lp.token_id)
                tokens.append(text)
                token_logprobs.append(finite_logprob(lp.logprob))
                top = {self.texts(t): finite_logprob(v) for t, v in list(lp.top.items())[:k]}
                top.setdefault(text, finite_logprob(lp.logprob))  # the token itself is always listed (OpenAI)
                top_logprobs.append(top)
            text_offset.append(offset)
            offset += len(text)
        self._offsets[index] = offset
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": text_offset}

    def _logprobs(self, index: int, lps: list[TokenLogprob]) -> dict[str, list]:
        return self._entries(index, lps)

    def _echo(self, delta: SequenceDelta) -> tuple[str, dict[str, list] | None]:
        """What goes before a choice's generated text, once: its prompt's text and, with logprobs, the
        prompt tokens' entries (the first token's text is its prompt's, its logprob null)."""
        if self.echo_texts is None or delta.index in self._started:
            return "", None
        self._started.add(delta.index)
        prompt = delta.index // self.n
        if not self.want_logprobs:
            return self.echo_texts[prompt], None
        # an aborted choice's only delta has no prompt logprobs: then nothing is echoed for them
        entries = self._entries(delta.index, delta.prompt_logprobs or (), self.echo_k, self.echo_first_tokens[prompt])
        return self.echo_texts[prompt], entries

    def add(self, choice: ChoiceAccumulator, delta: SequenceDelta) -> None:
        text, entries = self._echo(delta)
        if choice.prompt_logprobs is None:
            choice.prompt_logprobs = self.prompt_logprobs_body(delta)
        if text or entries:
            choice.texts.append(text)
            if entries is not None:
                choice.logprobs = entries
        choice.add(delta, self.logprobs(delta))

    def chunk(self, delta: SequenceDelta) -> dict | None:
        text, entries = self._echo(delta)
        if not (text or entries):
            return super().chunk(delta)
        logprobs = self.logprobs(delta)
        if entries is not None and logprobs is not None:
            logprobs = {k: entries[k] + logprobs[k] for k in entries}
        choice = self._chunk_choice(delta, logprobs)
        choice["text"] = text + choice["text"]
        body = self._envelope(self.chunk_object_name, [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def _chunk_choice(self, delta: SequenceDelta, logprobs: dict | None) -> dict:
        return {"index": delta.index, "text": delta.new_text, "logprobs": logprobs,
                "finish_reason": delta.finish_reason, "stop_reason": delta.stop_reason}

    def _final_choice(self, c: ChoiceAccumulator) -> dict:
        choice = {"index": c.index, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason,
                  "stop_reason": c.stop_reason}
        if self.want_prompt_logprobs is not None:
            choice["prompt_logprobs"] = c.prompt_logprobs
        return choice


class ChatFormatter(Formatter):
    """/v1/chat/completions: `message` / `delta`; logprobs as {content: [{token, logprob, bytes, top_logprobs}]}."""

    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(self, *args, parsing: ChatParsing | None = None, prompt_logprobs: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.parsing = parsing if parsing is not None and parsing.active else None
        self._parsers: dict[int, ChoiceParser] = {}  # choice index -> its running split (streaming)
        self.want_prompt_logprobs = prompt_logprobs
        self._prompt_logprobs: list | None = None

    def add(self, choice: ChoiceAccumulator, delta: SequenceDelta) -> None:
        if self._prompt_logprobs is None:
            self._prompt_logprobs = self.prompt_logprobs_body(delta)
        choice.add(delta, self.logprobs(delta))

    def response(self, choices: list[ChoiceAccumulator], usage: Usage) -> dict:
        body = super().response(choices, usage)
        if self.want_prompt_logprobs is not None:
            body["prompt_logprobs"] = self._prompt_logprobs
        return body

    def _entry(self, token_id: int, logprob: float) -> dict:
        text = self.texts(token_id)
        return {"token": text, "logprob": finite_logprob(logprob), "bytes": list(text.encode("utf-8"))}

    def _logprobs(self, index: int, lps: list[TokenLogprob]) -> dict[str, list]:
        content = []
        for lp in lps:
            entry = self._entry(lp.token_id, lp.logprob)
            entry["top_logprobs"] = [self._entry(t, v) for t, v in lp.top.items()]
            content.append(entry)
        return {"content": content}

    def role_chunk(self, index: int) -> dict:
        body = self._envelope(self.chunk_object_name, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}])
        if self.include_usage:
            body["usage"] = None
        return body

    def chunk(self, delta: SequenceDelta) -> dict | None:
        if self.parsing is None:
            return super().chunk(delta)
        parser = self._parsers.get(delta.index)
        if parser is None:
            parser = self._parsers[delta.index] = ChoiceParser(self.parsing, streaming=True)
        out = parser.feed(delta.new_text)
        if delta.finished:
            out = out + parser.finish()
        logprobs = self.logprobs(delta)
        if not out and not delta.finished and not (logprobs and any(logprobs.values())):
            return None  # held back: maybe the start of a tag, or a tool call still being written
        d: dict = {}
        if out.reasoning:
            d["reasoning_content"] = out.reasoning
        if out.content:
            d["content"] = out.content
        if out.tool_calls:
            first = parser.num_calls - len(out.tool_calls)
            d["tool_calls"] = [dict(call.body(), index=first + i) for i, call in enumerate(out.tool_calls)]
        if out.call_deltas:
            d["tool_calls"] = _call_deltas(out.call_deltas)
        choice = {"index": delta.index, "delta": d, "logprobs": logprobs,
                  "finish_reason": _finish_reason(delta.finish_reason, parser.num_calls),
                  "stop_reason": delta.stop_reason}
        body = self._envelope(self.chunk_object_name, [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def _chunk_choice(self, delta: SequenceDelta, logprobs: dict | None) -> dict:
        return {"index": delta.index, "delta": {"content": delta.new_text} if delta.new_text else {},
                "logprobs": logprobs, "finish_reason": delta.finish_reason, "stop_reason": delta.stop_reason}

    def _final_choice(self, c: ChoiceAccumulator) -> dict:
        if self.parsing is None:
            return {"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": c.logprobs,
                    "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
        parser = ChoiceParser(self.parsing)
        out: ChoiceOutput = parser.parse(c.text)
        message: dict = {"role": "assistant", "content": out.content or None}
        if self.parsing.reasoning is not None:
            message["reasoning_content"] = out.reasoning or None
        if out.tool_calls:
            message["tool_calls"] = [call.body() for call in out.tool_calls]
        return {"index": c.index, "message": message, "logprobs": c.logprobs,
                "finish_reason": _finish_reason(c.finish_reason, parser.num_calls), "stop_reason": c.stop_reason}


def _call_deltas(parts) -> list[dict]:
    """OpenAI's streamed calls: the first delta of a call has its index, id, type, name and the arguments so
    far (maybe ""), later ones the index and more arguments. Parts of one call in one chunk are one delta."""
    out: list[dict] = []
    for index, part in parts:
        if out and out[-1]["index"] == index and part.name is None:
            out[-1]["function"]["arguments"] += part.arguments
        elif part.name is not None:
            out.append({"index": index, "id": part.id, "type": "function",
                        "function": {"name": part.name, "arguments": part.arguments}})
        else:
            out.append({"index": index, "function": {"arguments": part.arguments}})
    return out


def _finish_reason(reason: str | None, num_calls: int) -> str | None:
    """A choice that ended by itself after calling tools finished because of them (OpenAI's `tool_calls`)."""
    return "tool_calls" if reason == "stop" and num_calls else reason
