"""`RequestRecord`: what one streamed request measured. Times are seconds; offsets are from the run's start."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

TokenSource = Literal["usage", "chunks"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request, successful or not.

    `failure` is the key it is counted under when it failed: the HTTP status code ("429", "500"), the
    exception type of a transport error ("ConnectError", "ReadTimeout"), "stream_error" for an error object
    inside the stream, or "no_output" for a stream that ended without a token.
    """

    index: int
    scheduled_s: float  # planned send offset from the arrival schedule
    sent_s: float  # actual send offset (later than planned when the concurrency limit held it back)
    max_tokens: int
    prompt_len: int | None  # exact length of a token-id prompt, else None
    ok: bool
    status_code: int | None = None
    failure: str | None = None
    error: str | None = None
    ttft_s: float | None = None  # first token chunk - send
    e2el_s: float | None = None  # last token chunk - send
    itl_s: tuple[float, ...] = ()  # gaps between consecutive token chunks
    prompt_tokens: int | None = None  # from usage
    output_tokens: int | None = None
    output_tokens_source: TokenSource | None = None  # "chunks" when the server sent no usage

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1); None for failures and one-token outputs."""
        if not self.ok or self.ttft_s is None or self.e2el_s is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def total_tokens(self) -> int:
        """Prompt + output tokens (prompt from usage, else the known prompt length, else 0)."""
        prompt = self.prompt_tokens if self.prompt_tokens is not None else (self.prompt_len or 0)
        return prompt + (self.output_tokens or 0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["itl_s"] = list(self.itl_s)
        out["tpot_s"] = self.tpot_s
        return out
