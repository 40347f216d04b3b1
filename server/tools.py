"""A chat request's `tools`, `tool_choice` and `parallel_tool_calls` -> what the template, the sampler and the
output parser each get (`ToolPlan`), with every mistake a 400 naming its field.

    tool_choice          the template sees the tools   output constrained to calls   calls parsed
    none                 yes                           no                            no
    auto (the default)   yes                           no                            yes (needs a parser)
    required             yes                           one or more calls (*)         yes
    {"function": name}   yes                           exactly one call of `name`    yes

(*) exactly one with `parallel_tool_calls: false`, which also keeps only the first call under `auto`.
Forced calls (required, named) stream their arguments in pieces; see `tool_parsers.base`.

Constrained calls are an xgrammar grammar in the parser's own format (`call_text` of the parser: Hermes'
`<tool_call>` block, Llama's `{"name": ..., "parameters": ...}`) whose arguments are each function's
parameter schema, so a forced call always parses and its arguments always validate against the schema.
The grammar is built from per-tool JSON-schema grammars with xgrammar's own `Grammar` combinators and
handed to the engine as EBNF (`StructuredOutputsParams(grammar=...)`), compiled like any other constraint.
Every tool's schema is converted even under `auto`, so a schema xgrammar cannot read is a 400 naming
`tools[i].function.parameters` whatever the choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.structured.spec import StructuredOutputsParams

from .errors import bad_request, cap
from .tool_parsers import TOOL_PARSERS, ToolParser

CALL_RULE = "kvserve_tool_call"  # the EBNF rule of one call; xgrammar's own rule names are root*, basic_*, ...
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    template_tools: list[dict] | None  # the tools as the chat template gets them (OpenAI's shape)
    parser: type[ToolParser] | None  # None: the output is not parsed for calls
    max_calls: int | None  # 1 with parallel_tool_calls false
    constraint: StructuredOutputsParams | None  # required / named choice


def no_parser_error(param: str = "tool_choice"):
    return bad_request(param, f"{param}: this server cannot parse tool calls: the chat template writes them in no "
                              "format it knows; start it with --tool-call-parser (hermes or llama3_json) or a "
                              "--chat-template that writes <tool_call> blocks", code="unsupported_parameter")


def tool_plan(req, parser_name: str | None) -> ToolPlan:
    """`req` is a `protocol.ChatCompletionRequest`; `parser_name` the server's tool-call parser (or None)."""
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice", "tool_choice: needs tools; this request has none")
        return ToolPlan(None, None, None, None)
    names = [t.function.name for t in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise bad_request(f"tools[{i}].function.name", f"tools[{i}].function.name: {name!r} is defined twice")
    schemas = [_schema(i, t.function.parameters) for i, t in enumerate(tools)]
    template_tools = [{"type": "function", "function": _function_dict(t.function)} for t in tools]
    if choice is None:
        choice = "auto"
    if choice == "none":
        return ToolPlan(template_tools, None, None, None)
    parser = TOOL_PARSERS.get(parser_name) if parser_name else None
    if parser is None:
        raise no_parser_error()
    single = not req.parallel_tool_calls
    if choice == "auto":
        return ToolPlan(template_tools, parser, 1 if single else None, None)
    if isinstance(choice, dict):
        wanted = choice["function"]["name"]
        if wanted not in names:
            raise bad_request("tool_choice", cap(f"tool_choice: no tool is named {wanted!r}; tools has "
                                                 f"{', '.join(map(repr, names))}"))
        index = names.index(wanted)
        grammar = calls_grammar(parser, [(wanted, schemas[index])], single=True)
        return ToolPlan(template_tools, parser, 1, StructuredOutputsParams(grammar=grammar))
    grammar = calls_grammar(parser, list(zip(names, schemas)), single=single)
    return ToolPlan(template_tools, parser, 1 if single else None, StructuredOutputsParams(grammar=grammar))


def _function_dict(fn) -> dict:
    out: dict = {"name": fn.name}
    if fn.description is not None:
        out["description"] = fn.description
    out["parameters"] = fn.parameters if fn.parameters is not None else EMPTY_PARAMETERS
    return out


def _schema(i: int, parameters: dict | None) -> dict:
    """The parameter schema of tool i, checked: arguments are always a JSON object."""
    param = f"tools[{i}].function.parameters"
    if parameters is None:
        return EMPTY_PARAMETERS
    if parameters.get("type", "object") != "object":
        raise bad_request(param, f"{param}: must be a JSON schema of type object (arguments are an object), got "
                                 f"type {parameters.get('type')!r}")
    try:
        _json_grammar(parameters)
    except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with its parser's message
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise bad_request(param, cap(f"{param}: not a JSON schema this server can follow: {message}")) from None
    return parameters


def _json_grammar(schema: dict):
    import xgrammar as xgr

    return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)


def calls_grammar(parser: type[ToolParser], functions: list[tuple[str, dict]], single: bool) -> str:
    """EBNF for one call (or, unless `single`, one or more) of any of `functions`, in `parser`'s format."""
    import xgrammar as xgr

    alternatives = []
    for name, schema in functions:
        begin, end = parser.call_text(name)
        alternatives.append(xgr.Grammar.concat(_literal(begin), _json_grammar(schema), _literal(end)))
    one = alternatives[0] if len(alternatives) == 1 else xgr.Grammar.union(*alternatives)
    rules = str(one).splitlines()
    head = [k for k, line in enumerate(rules) if line.startswith("root ::= ")]
    assert len(head) == 1, "xgrammar prints exactly one root rule"
    rules[head[0]] = CALL_RULE + rules[head[0]][len("root"):]
    repeat = "" if single else f" ({json.dumps(parser.separator)} {CALL_RULE})*"
    return "\n".join([f"root ::= {CALL_RULE}{repeat}", *rules]) + "\n"


def _literal(text: str):
    import xgrammar as xgr

    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text, ensure_ascii=False)}")
