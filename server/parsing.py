"""Request bodies: bytes -> strict JSON -> a pydantic model, every failure a 400 naming the field.

Python's json module accepts NaN, Infinity and numbers like 1e999 (which become inf); this parser rejects
them, so a non-finite number never reaches a sampling parameter. Pydantic errors become one message whose
`param` is the field path as clients write it (`messages[0].role`).
"""

from __future__ import annotations

import json
import math
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import APIError, bad_request

M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON; numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range; numbers must be finite")
    return value


def parse_json_object(body: bytes) -> dict:
    if not body:
        raise bad_request(None, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        obj = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise bad_request(None, "the request body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(None, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise bad_request(None, f"the request body must be a JSON object, got {type(obj).__name__}", code="invalid_json")
    return obj


def field_path(loc: tuple) -> str | None:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or None


def validation_error(err: ValidationError | list[dict]) -> APIError:
    """The first pydantic error as a 400: `param` = field path, message = "path: what is wrong"."""
    errors = err.errors(include_input=False) if isinstance(err, ValidationError) else err
    first = errors[0]
    loc = tuple(p for p in first.get("loc", ()) if p != "body")  # FastAPI prefixes body fields with "body"
    param = field_path(loc)
    msg = str(first.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if first.get("type") == "missing":
        msg = "is required"
    return bad_request(param, f"{param}: {msg}" if param else msg)


def parse_request(body: bytes, model: type[M]) -> M:
    obj = parse_json_object(body)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e) from None
