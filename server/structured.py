"""Structured-output request fields -> one engine `StructuredOutputsParams`, and its compilation off the loop.

Clients ask for constrained output in several spellings, all mapped here:

    response_format {"type": "json_object"}                           -> json_object
    response_format {"type": "json_schema", "json_schema": {"schema"}} -> json (the schema)
    structured_outputs {json | json_object | regex | choice | grammar} -> the same (vLLM >= 0.10)
    guided_json / guided_regex / guided_choice / guided_grammar        -> json / regex / choice / grammar (older vLLM)

At most one of them per request (two are a 400 naming the second). The constraint is compiled by the
engine's `GrammarCompiler` on a worker thread before the request is submitted, so a schema that cannot be
compiled is a 400 naming the field it came in, and the engine thread finds the grammar in the cache.
"""

from __future__ import annotations

from engine.sampling_params import ParamError
from engine.structured.spec import StructuredOutputsParams

from .errors import bad_request


def structured_spec(req) -> tuple[StructuredOutputsParams | None, str | None]:
    """The engine constraint of a request (`protocol.StructuredFields`) and the field it came from (None, None
    when it has none)."""
    found: list[tuple[str, dict]] = []
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        found.append(("response_format", {"json_object": True}))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise bad_request("response_format", "response_format: type json_schema needs json_schema.schema")
        found.append(("response_format", {"json": rf.json_schema.schema_}))
    so = req.structured_outputs
    if so is not None:
        given = {k: v for k, v in (("json", so.json_), ("json_object", so.json_object or None),
                                   ("regex", so.regex), ("choice", so.choice), ("grammar", so.grammar))
                 if v is not None}
        found.append(("structured_outputs", given))
    for name, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                      ("guided_grammar", "grammar")):
        value = getattr(req, name)
        if value is not None:
            found.append((name, {key: value}))
    if not found:
        return None, None
    if len(found) > 1:
        raise bad_request(found[1][0], f"{found[1][0]}: only one structured-output constraint per request "
                                       f"(this one also has {found[0][0]})")
    param, kwargs = found[0]
    try:
        return StructuredOutputsParams(**kwargs), param
    except ParamError as e:
        raise bad_request(param, param + str(e)[len(e.param):]) from None


async def compile_constraint(ctx, spec: StructuredOutputsParams, param: str) -> None:
    """Compile on a worker thread (the result lands in the engine's cache); a 400 naming `param` if it cannot."""
    grammars = ctx.grammars
    if grammars is None or grammars.cached(spec):
        return
    try:
        await ctx.run_cpu(grammars.compile, spec)
    except ParamError as e:
        raise bad_request(param, param + str(e)[len(e.param):]) from None
