"""The tool-call and reasoning parsers on hand-written model outputs: what becomes a call, what stays content,
and that streaming the same text in any pieces gives the same split as parsing it whole."""

from __future__ import annotations

import json

import pytest

from server.chat_output import ChatParsing, ChoiceParser
from server.reasoning import ReasoningParser
from server.tool_parsers import HermesToolParser, Llama3JsonToolParser, detect_tool_parser


def calls(piece) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in piece.tool_calls]


def streamed(parser, text: str, size: int):
    """Feed `text` in pieces of `size` characters, then finish; joined like a client joins deltas."""
    content, found = "", []
    for i in range(0, len(text), size):
        p = parser.feed(text[i:i + size])
        content += p.content
        found += p.tool_calls
    p = parser.finish()
    return content + p.content, found + list(p.tool_calls)


HERMES_TWO = ('I will check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>')


def test_hermes_text_before_two_calls_gives_content_and_both_calls_in_order():
    piece = HermesToolParser().parse(HERMES_TWO)
    assert piece.content == "I will check both."
    assert calls(piece) == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in piece.tool_calls)
    assert piece.tool_calls[0].id != piece.tool_calls[1].id


def test_hermes_malformed_json_stays_content_as_written():
    text = 'Hmm <tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>'  # one brace short
    piece = HermesToolParser().parse(text)
    assert piece.tool_calls == ()
    assert piece.content == text


def test_hermes_body_without_name_or_with_non_object_arguments_is_not_a_call():
    for body in ('{"arguments": {}}', '{"name": "f", "arguments": [1]}', '{"name": "f", "arguments": {}, "x": 1}'):
        piece = HermesToolParser().parse(f"<tool_call>{body}</tool_call>")
        assert piece.tool_calls == () and piece.content == f"<tool_call>{body}</tool_call>"


def test_hermes_arguments_given_as_a_json_string_are_accepted():
    piece = HermesToolParser().parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 2}"}</tool_call>')
    assert calls(piece) == [("f", {"a": 2})]


def test_hermes_call_left_open_at_the_end_counts_when_its_json_is_complete():
    piece = HermesToolParser().parse('<tool_call>\n{"name": "f", "arguments": {}}\n')
    assert calls(piece) == [("f", {})] and piece.content == ""


def test_hermes_text_without_calls_is_all_content_including_a_lone_angle_bracket():
    assert HermesToolParser().parse("a < b and <tool").content == "a < b and <tool"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_hermes_streaming_in_any_piece_size_equals_parsing_whole(size):
    content, found = streamed(HermesToolParser(), HERMES_TWO + "\nDone.", size)
    whole = HermesToolParser().parse(HERMES_TWO + "\nDone.")
    assert content == whole.content == "I will check both.\nDone."
    assert [(c.name, c.arguments) for c in found] == [(c.name, c.arguments) for c in whole.tool_calls]


def test_hermes_streaming_never_emits_part_of_the_tag_as_content():
    parser = HermesToolParser()
    pieces = [parser.feed(t) for t in ["Sure ", "<", "tool_", "call>", '{"name": "f", ', '"arguments": {}}', "</tool",
                                       "_call>"]]
    assert [p.content for p in pieces] == ["Sure", "", "", "", "", "", "", ""]
    assert calls(pieces[-1]) == [("f", {})]
    assert parser.finish().content == ""


def test_llama3_json_single_call_without_python_tag():
    piece = Llama3JsonToolParser().parse(' {"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert calls(piece) == [("get_weather", {"city": "Oslo"})] and piece.content == ""


def test_llama3_json_several_calls_after_python_tag_separated_by_semicolons():
    text = 'Calling.<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    piece = Llama3JsonToolParser().parse(text)
    assert piece.content == "Calling."
    assert calls(piece) == [("a", {"x": 1}), ("b", {})]


def test_llama3_json_that_is_not_only_calls_is_all_content():
    for text in ('{"name": "a", "parameters": {}} and some words', '{"name": "a", "parameters": {', '{"city": "Rome"}'):
        piece = Llama3JsonToolParser().parse(text)
        assert piece.tool_calls == () and piece.content == text


def test_llama3_json_plain_answer_streams_as_content_at_once():
    parser = Llama3JsonToolParser()
    assert parser.feed("The answer").content == "The answer"
    assert parser.feed(" is 4.").content == " is 4."


@pytest.mark.parametrize("size", [1, 4, 9])
def test_llama3_json_streaming_equals_parsing_whole(size):
    text = '<|python_tag|>{"name": "a", "parameters": {"x": [1, 2]}};{"name": "b", "parameters": {}}'
    content, found = streamed(Llama3JsonToolParser(), text, size)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in found] == [("a", {"x": [1, 2]}), ("b", {})]


def test_the_parser_is_detected_from_the_chat_template():
    from server.chat_template import SHIPPED

    assert detect_tool_parser(SHIPPED["smollm2-tools"].read_text()) == "hermes"
    assert detect_tool_parser("{{ '<|start_header_id|>' }}{% if tools %}<|python_tag|>{% endif %}") == "llama3_json"
    assert detect_tool_parser("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert detect_tool_parser(None) is None


# ---- reasoning ----------------------------------------------------------------------------------------------
def test_qwen3_splits_thinking_from_the_answer():
    split = ReasoningParser("qwen3").parse("<think>\nLet me add.\n</think>\n\nIt is 4.")
    assert (split.reasoning, split.content) == ("Let me add.\n", "It is 4.")


def test_qwen3_output_without_think_is_all_answer():
    split = ReasoningParser("qwen3").parse("It is 4. </think> stays")
    assert (split.reasoning, split.content) == ("", "It is 4. </think> stays")


def test_qwen3_thinking_cut_short_is_all_reasoning():
    split = ReasoningParser("qwen3").parse("<think>still going")
    assert (split.reasoning, split.content) == ("still going", "")


def test_deepseek_r1_starts_in_reasoning_because_the_prompt_opened_think():
    split = ReasoningParser("deepseek_r1").parse("Hmm, 2+2.</think>4")
    assert (split.reasoning, split.content) == ("Hmm, 2+2.", "4")
    assert ReasoningParser("deepseek_r1").parse("no end tag").reasoning == "no end tag"


@pytest.mark.parametrize("pieces", [["<thi", "nk>abc</th", "ink>xyz"], ["<", "think", ">", "abc<", "/think", ">xyz"],
                                    ["<think>abc</think>xyz"], list("<think>abc</think>xyz")])
def test_reasoning_tags_split_across_stream_pieces_are_still_found(pieces):
    parser = ReasoningParser("qwen3")
    reasoning = content = ""
    for p in pieces:
        split = parser.feed(p)
        reasoning += split.reasoning
        content += split.content
        assert "<" not in split.reasoning + split.content  # no half tag ever leaks out
    split = parser.finish()
    assert (reasoning + split.reasoning, content + split.content) == ("abc", "xyz")


def test_tool_calls_are_parsed_from_the_answer_only_not_from_the_reasoning():
    parsing = ChatParsing(reasoning="qwen3", tool_parser=HermesToolParser)
    text = ('<think>maybe <tool_call>{"name": "x", "arguments": {}}</tool_call>?</think>\n\n'
            '<tool_call>{"name": "y", "arguments": {"k": 1}}</tool_call>')
    out = ChoiceParser(parsing).parse(text)
    assert out.reasoning == 'maybe <tool_call>{"name": "x", "arguments": {}}</tool_call>?'
    assert out.content == "" and [(c.name, c.arguments) for c in out.tool_calls] == [("y", '{"k": 1}')]


def test_parallel_tool_calls_false_keeps_only_the_first_call():
    out = ChoiceParser(ChatParsing(tool_parser=HermesToolParser, max_calls=1)).parse(HERMES_TWO)
    assert [c.name for c in out.tool_calls] == ["get_weather"]


# ---- the grammar of forced calls ------------------------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}


@pytest.mark.parametrize("parser, one, two", [
    (HermesToolParser, '<tool_call>\n{"name": "f", "arguments": {"n": 1}}\n</tool_call>',
     '<tool_call>\n{"name": "f", "arguments": {"n": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n'
     '</tool_call>'),
    (Llama3JsonToolParser, '{"name": "f", "parameters": {"n": 1}}',
     '{"name": "f", "parameters": {"n": 1}}; {"name": "g", "parameters": {}}'),
])
def test_forced_call_grammar_accepts_exactly_calls_in_the_parsers_format_that_the_parser_reads_back(parser, one, two):
    xgr = pytest.importorskip("xgrammar")
    accepts = getattr(xgr.testing, "_is_grammar_accept_string", None)
    if accepts is None:
        pytest.skip("this xgrammar has no string-acceptance helper")
    from server.tools import calls_grammar

    functions = [("f", SCHEMA), ("g", {"type": "object", "properties": {}})]
    single = xgr.Grammar.from_ebnf(calls_grammar(parser, functions, single=True))
    several = xgr.Grammar.from_ebnf(calls_grammar(parser, functions, single=False))
    assert accepts(single, one) and not accepts(single, two)
    assert accepts(several, one) and accepts(several, two)
    for bad in (one.replace('"n": 1', '"n": "1"'), one.replace('"f"', '"h"'), "Sure. " + one):
        assert not accepts(several, bad)
    assert [c.name for c in parser().parse(two).tool_calls] == ["f", "g"]


# ---- forced calls stream their arguments --------------------------------------------------------------------
FORCED = ('<tool_call>\n{"name": "f", "arguments": {"a": {"b": [1, 2]}, "c": "}"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_forced_hermes_calls_stream_name_first_then_argument_pieces_that_join_to_the_arguments(size):
    parsing = ChatParsing(tool_parser=HermesToolParser, forced=True)
    parser = ChoiceParser(parsing, streaming=True)
    parts = []
    for i in range(0, len(FORCED), size):
        out = parser.feed(FORCED[i:i + size])
        assert out.content == "" and out.tool_calls == ()
        parts += out.call_deltas
    parts += parser.finish().call_deltas
    starts = [(i, p.name) for i, p in parts if p.name is not None]
    assert starts == [(0, "f"), (1, "g")] and all(p.arguments == "" for _, p in parts if p.name is not None)
    joined = {i: "".join(p.arguments for j, p in parts if j == i) for i in (0, 1)}
    assert joined == {0: '{"a": {"b": [1, 2]}, "c": "}"}', 1: "{}"}
    assert parser.num_calls == 2
    if size == 1:
        assert sum(1 for i, p in parts if i == 0 and p.name is None) > 10  # really in pieces


def test_forced_calls_are_whole_calls_when_not_streaming():
    out = ChoiceParser(ChatParsing(tool_parser=HermesToolParser, forced=True)).parse(FORCED)
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == [("f", {"a": {"b": [1, 2]}, "c": "}"}),
                                                                           ("g", {})]
    assert out.call_deltas == ()
