"""Incremental detokenization and stop-string matching for one sequence.

Text is produced token by token with the tokenizers library's `DecodeStream`, primed with the prompt so the
first output token gets the right leading space (SentencePiece) and multi-byte characters split across
tokens come out whole once complete. A slow (Python) tokenizer falls back to decoding a sliding window.

Stop strings are matched on the text. Text that could be the beginning of a stop string is held back until
it is known not to be, so a stop string is never streamed partially; when one matches, the text ends right
before it (or after it, with include_stop_str_in_output).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class _WindowDecoder:
    """Fallback for tokenizers without a Rust backend: decode a window of recent tokens and emit the
    difference once it no longer ends in an incomplete character."""

    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool):
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids = list(prompt_ids[-6:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def step(self, token_id: int) -> str | None:
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return None


@dataclass
class IncrementalDetokenizer:
    """Feeds one sequence's output tokens and returns the text each one releases."""

    tokenizer: object
    prompt_ids: list[int]
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    text: str = ""  # all decoded output text so far (held-back part included)
    emitted: int = 0  # how many characters of `text` have been released
    stopped_by: str | None = None

    def __post_init__(self) -> None:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(ids=list(self.prompt_ids[-8:]), skip_special_tokens=self.skip_special_tokens)
            self._step = lambda t: self._stream.step(backend, t)
        else:
            self._step = _WindowDecoder(self.tokenizer, self.prompt_ids, self.skip_special_tokens).step
        self._max_stop = max((len(s) for s in self.stop), default=0)

    def push(self, token_id: int, check_stop: bool = True) -> str:
        """Add one token; returns the newly released text (maybe ""). Sets `stopped_by` on a stop match.
        With check_stop False (min_tokens not reached yet) stop strings are not looked for."""
        piece = self._step(token_id)
        if piece:
            self.text += piece
        if not self.stop or not check_stop:
            return self._release(len(self.text))
        # Only the tail can hold a new match: search from where a match could start.
        search_from = max(0, self.emitted - self._max_stop + 1) if piece else len(self.text)
        cut = None
        for s in self.stop:
            pos = self.text.find(s, search_from)
            if pos != -1 and (cut is None or pos < cut[0]):
                cut = (pos, s)
        if cut is not None:
            pos, s = cut
            self.stopped_by = s
            self.text = self.text[:pos + len(s)] if self.include_stop_str_in_output else self.text[:pos]
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def flush(self) -> str:
        """The sequence finished for another reason: release whatever was held back."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out
