"""Reasoning parsers: a `<think>...</think>` model's output split into reasoning and answer.

    --reasoning-parser qwen3        the output may open with <think>; reasoning runs to </think>. Output that
                                    does not open with <think> is all answer (Qwen3 with enable_thinking off).
    --reasoning-parser deepseek_r1  the template already opened <think> in the prompt, so the output starts
                                    in reasoning (a leading <think> is skipped) and the answer follows
                                    </think>; output without </think> is all reasoning (it was cut short).

The reasoning goes to `message.reasoning_content` (`delta.reasoning_content` while streaming), the answer to
`content`, and tool calls are parsed from the answer alone. A request with
`chat_template_kwargs: {"enable_thinking": false}` (or `thinking: false`) gets no split: the template asked
the model not to think, so everything it writes is the answer.

Streaming holds back text that may be the start of a tag (`<thi` waits for the next piece), so a tag split
across two pieces is still found and never shows up in either part; `parse` is `feed` then `finish`.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"
REASONING_PARSERS = ("qwen3", "deepseek_r1")


@dataclass(frozen=True, slots=True)
class Split:
    reasoning: str = ""
    content: str = ""


def _partial(text: str, tag: str) -> int:
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningParser:
    """One choice's split. States: "start" (has the output opened <think>?), "reasoning", "content"."""

    def __init__(self, kind: str):
        if kind not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser: must be one of {', '.join(REASONING_PARSERS)}, got {kind!r}")
        self.kind = kind
        self._state = "start"
        self._pending = ""
        self._strip = False  # whitespace right after <think> or </think> is layout, not reasoning or answer

    def feed(self, text: str) -> Split:
        self._pending += text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            if self._state == "start":
                head = self._pending.lstrip()
                if OPEN.startswith(head) and len(head) < len(OPEN):
                    break  # still could be <think>
                if head.startswith(OPEN):
                    self._pending, self._state, self._strip = head[len(OPEN):], "reasoning", True
                else:
                    self._state = "reasoning" if self.kind == "deepseek_r1" else "content"
            elif self._strip:
                self._pending = self._pending.lstrip()
                if not self._pending:
                    break
                self._strip = False
            elif self._state == "reasoning":
                end = self._pending.find(CLOSE)
                if end < 0:
                    keep = _partial(self._pending, CLOSE)
                    reasoning.append(self._pending[:len(self._pending) - keep])
                    self._pending = self._pending[len(self._pending) - keep:]
                    break
                reasoning.append(self._pending[:end])
                self._pending, self._state, self._strip = self._pending[end + len(CLOSE):], "content", True
            else:
                content.append(self._pending)
                self._pending = ""
                break
        return Split("".join(reasoning), "".join(content))

    def finish(self) -> Split:
        pending, self._pending = self._pending, ""
        if self._strip:
            pending = pending.lstrip()
        if self._state == "reasoning":
            return Split(reasoning=pending)
        if self._state == "start" and self.kind == "deepseek_r1":
            return Split(reasoning=pending)
        return Split(content=pending)

    def parse(self, text: str) -> Split:
        a, b = self.feed(text), self.finish()
        return Split(a.reasoning + b.reasoning, a.content + b.content)


def thinking_disabled(template_kwargs: dict | None) -> bool:
    """The request told the template not to think (Qwen3's `enable_thinking`, others' `thinking`)."""
    kw = template_kwargs or {}
    return kw.get("enable_thinking") is False or kw.get("thinking") is False
