"""Prompt files: read a JSONL file (or a JSON array) of ShareGPT conversations or plain prompts.

Accepted lines, mixed freely:

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}, ...]}
    {"prompt": "...", "max_tokens": 64}          # max_tokens optional

A conversation contributes its first human turn (`from` "human" or "user"); one with no human turn is
skipped and counted. A malformed line is an error that names the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_HUMAN = ("human", "user")


@dataclass(frozen=True, slots=True)
class PromptEntry:
    """One usable prompt from the file; `max_tokens` None means "use --output-len"."""

    prompt: str
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PromptFile:
    path: Path
    entries: tuple[PromptEntry, ...]
    skipped: int  # conversations without a human turn


def _entry(obj: object, where: str) -> PromptEntry | None:
    if not isinstance(obj, dict):
        raise ValueError(f"dataset: {where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj:
        prompt, max_tokens = obj["prompt"], obj.get("max_tokens")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"dataset: {where}: 'prompt' must be a non-empty string")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise ValueError(f"dataset: {where}: 'max_tokens' must be an integer >= 1, got {max_tokens!r}")
        return PromptEntry(prompt, max_tokens)
    turns = obj.get("conversations")
    if not isinstance(turns, list):
        raise ValueError(f"dataset: {where}: expected a 'prompt' string or a 'conversations' list")
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from") in _HUMAN and isinstance(turn.get("value"), str) and turn["value"]:
            return PromptEntry(turn["value"])
    return None


def load_prompt_file(path: str | Path) -> PromptFile:
    """Every usable prompt in `path`, in file order. ValueError if none is usable."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items = [(f"item {i}", obj) for i, obj in enumerate(json.loads(text))]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"dataset: {path}: line {n} is not JSON ({e.msg})") from None
    entries, skipped = [], 0
    for where, obj in items:
        entry = _entry(obj, f"{path}: {where}")
        if entry is None:
            skipped += 1
        else:
            entries.append(entry)
    if not entries:
        raise ValueError(f"dataset: {path} holds no usable prompt")
    return PromptFile(path, tuple(entries), skipped)
