"""Request bodies: bytes -> strict JSON -> a pydantic model, every failure a 400 naming the field.

Python's json module accepts NaN, Infinity and numbers like 1e999 (which become inf); this parser rejects
them, so a non-finite number never reaches a sampling parameter. It also accepts text that is not valid
Unicode (a lone UTF-16 surrogate such as `"\\ud800"`, or its raw UTF-8 bytes), which the tokenizer, the
detokenizer's stop strings and the log cannot handle: such a string is refused here, naming the field it
sits in, so no text from the client gets further unchecked. Nesting is capped at `MAX_JSON_DEPTH` levels.
Pydantic errors become one message whose `param` is the field path as clients write it
(`messages[0].role`); a field the model does not declare is refused (see `unsupported.py`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import APIError, bad_request
from .unsupported import refusal

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 64  # a chat message's content parts sit at depth 5; JSON schemas in tools need more
_SURROGATE = re.compile("[\ud800-\udfff]")
# A lone surrogate can only come in as a \uD800-\uDFFF escape or as the raw (invalid) UTF-8 bytes ED A0-BF.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


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
        # UTF-8 only (RFC 8259), not the UTF-16/32 that json.loads would also guess; surrogates encoded in
        # UTF-8 pass here so that the check below can name the field that holds them.
        text = body.decode("utf-8", "surrogatepass")
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise bad_request(None, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep",
                          code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(None, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise bad_request(None, f"the request body must be a JSON object, got {type(obj).__name__}", code="invalid_json")
    maybe_surrogate = (b"\\u" in body or b"\xed" in body) and _MAYBE_SURROGATE.search(body) is not None
    check_tree(obj, check_text=maybe_surrogate)
    return obj


def check_tree(obj: dict, check_text: bool = True) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and strings (values or keys) that are not valid Unicode.
    Lists of plain numbers, the bulk of large bodies, are skipped by looking at their element types in C."""
    stack: list[tuple[Any, str, int]] = [(obj, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(path or None, f"{path or 'the request body'}: nested more than {MAX_JSON_DEPTH} "
                                            "levels deep", code="too_deep")
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}" if path else key
                if check_text:
                    _check_text(key, child)
                if isinstance(value, (dict, list)):
                    stack.append((value, child, depth + 1))
                elif check_text and isinstance(value, str):
                    _check_text(value, child)
        else:
            kinds = set(map(type, node))
            if kinds & {dict, list} or (check_text and str in kinds):
                for i, value in enumerate(node):
                    if isinstance(value, (dict, list)):
                        stack.append((value, f"{path}[{i}]", depth + 1))
                    elif check_text and isinstance(value, str):
                        _check_text(value, f"{path}[{i}]")


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise bad_request(path, f"{path}: is not valid Unicode text: a lone UTF-16 surrogate "
                                f"(\\u{ord(bad.group()):04x}) at character {bad.start()}", code="invalid_unicode")


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
    if first.get("type") == "extra_forbidden" and loc:
        msg, code = refusal(str(loc[-1]))
        return bad_request(param, f"{param}: {msg}", code=code)
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
