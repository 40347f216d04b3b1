"""Errors as clients see them: `APIError` and the OpenAI error envelope.

Every failure the server reports, whatever its origin (validation, auth, the engine), becomes one
`APIError` and leaves as `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.
Messages are capped so that an error never echoes a huge input back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import MAX_ERROR_MESSAGE_CHARS

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


def cap(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def printable(text: str) -> str:
    """`text` with anything that is not valid Unicode (lone surrogates) escaped as `\\udXXX`, so that
    an error naming bad input can always be encoded as UTF-8 and logged."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class APIError(Exception):
    """A request failed with an HTTP status; `param` names the offending request field, if any."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        self.message = cap(printable(self.message))
        if self.param is not None:
            self.param = cap(printable(self.param), 200)  # a field path can hold a client's (huge) key

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "internal_server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str) -> APIError:
    return APIError(503, message, code="service_unavailable")
