"""What a request asks its output to match: a JSON schema, any JSON object, a regex, one of several choices, or
an EBNF grammar (`StructuredOutputsParams`, the `structured_outputs` field of `SamplingParams`).

Plain data, checked where it enters the engine: exactly one constraint, each of the right type and bounded
in size. Whether the constraint compiles is decided by the grammar library (`engine.structured.compiler`),
which raises `ParamError("structured_outputs", ...)` when it does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_SPEC_CHARS = 64 * 1024  # a schema, regex or grammar larger than this is refused before it is compiled
MAX_CHOICES = 256


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of: `json` (a JSON schema, as a dict or its JSON text), `json_object` (any JSON object),
    `regex`, `choice` (the output is one of these strings) or `grammar` (EBNF in xgrammar's dialect, with a
    `root` rule)."""

    json: dict | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    key: tuple[str, str] = field(init=False, repr=False, compare=False)  # (kind, canonical text): the cache key

    def __post_init__(self) -> None:
        from ..sampling_params import ParamError

        p = "structured_outputs"
        if self.choice is not None and not isinstance(self.choice, tuple):
            if not isinstance(self.choice, list):
                raise ParamError(p, f"choice must be a list of strings, got {type(self.choice).__name__}")
            object.__setattr__(self, "choice", tuple(self.choice))
        given = [name for name, v in (("json", self.json), ("json_object", self.json_object or None),
                                      ("regex", self.regex), ("choice", self.choice), ("grammar", self.grammar))
                 if v is not None]
        if len(given) != 1:
            raise ParamError(p, f"exactly one of json, json_object, regex, choice, grammar must be given, got "
                                f"{given or 'none'}")
        kind = given[0]
        if kind == "json":
            if isinstance(self.json, dict):
                text = json.dumps(self.json, separators=(",", ":"))  # key order kept: it is the output's order
            elif isinstance(self.json, str):
                try:
                    if not isinstance(json.loads(self.json), dict):
                        raise ValueError("not an object")
                except ValueError:
                    raise ParamError(p, "json must be a JSON schema: an object, or a string holding one") from None
                text = self.json
            else:
                raise ParamError(p, f"json must be a JSON schema object, got {type(self.json).__name__}")
        elif kind == "json_object":
            text = ""
        elif kind == "choice":
            if not self.choice or len(self.choice) > MAX_CHOICES:
                raise ParamError(p, f"choice must hold 1 to {MAX_CHOICES} strings, got {len(self.choice)}")
            if not all(isinstance(c, str) and c for c in self.choice):
                raise ParamError(p, "choice must hold non-empty strings")
            text = json.dumps(list(self.choice))
        else:
            text = getattr(self, kind)
            if not isinstance(text, str) or not text:
                raise ParamError(p, f"{kind} must be a non-empty string")
        if len(text) > MAX_SPEC_CHARS:
            raise ParamError(p, f"{kind} is {len(text)} characters; at most {MAX_SPEC_CHARS} are accepted")
        object.__setattr__(self, "key", (kind, text))

    @property
    def kind(self) -> str:
        return self.key[0]
