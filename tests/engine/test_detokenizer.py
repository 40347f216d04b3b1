"""Incremental detokenization is exact for multi-byte text and spacing; stop strings cut the text exactly
and are never streamed partially."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello world, this is plain ASCII.",
    "naïve café — «quotes» and ümlauts",
    "数学 is 数学, 你好世界",
    "emoji 🎉🚀 and a family 👨‍👩‍👧 emoji",
    "  leading spaces and\ttabs\nnew lines  ",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from engine.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(None).path)


def stream(tokenizer, text: str, prompt: str = "Say:", **kw) -> tuple[list[str], IncrementalDetokenizer]:
    d = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt), **kw)
    deltas = []
    for t in tokenizer.encode(text):
        deltas.append(d.push(t))
        if d.stopped_by:
            break
    if not d.stopped_by:
        deltas.append(d.flush())
    return deltas, d


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_full_decode(tokenizer, text):
    deltas, _ = stream(tokenizer, text)
    assert "".join(deltas) == tokenizer.decode(tokenizer.encode(text))
    assert not any("\ufffd" in d for d in deltas)


def test_stop_string_cuts_text_before_it(tokenizer):
    deltas, d = stream(tokenizer, "The answer is 42. END of story", stop=["END"])
    assert "".join(deltas) == "The answer is 42. "
    assert d.stopped_by == "END"


def test_stop_string_is_never_streamed_partially(tokenizer):
    # the stop string spans several tokens; no delta may contain any part of it
    deltas, d = stream(tokenizer, "alpha beta ###STOP### gamma", stop=["###STOP###"])
    assert "".join(deltas) == "alpha beta "
    assert all("#" not in x for x in deltas)


def test_held_back_text_is_released_when_it_does_not_become_a_stop(tokenizer):
    deltas, d = stream(tokenizer, "a b c stoplight done", stop=["stop sign"])
    assert d.stopped_by is None
    assert "".join(deltas) == tokenizer.decode(tokenizer.encode("a b c stoplight done"))


def test_include_stop_str_in_output_keeps_the_stop_string(tokenizer):
    deltas, d = stream(tokenizer, "one two three four", stop=["three"], include_stop_str_in_output=True)
    assert "".join(deltas) == "one two three"


def test_earliest_of_several_stop_strings_wins(tokenizer):
    deltas, d = stream(tokenizer, "x y z w", stop=["w", "y"])
    assert "".join(deltas) == "x " and d.stopped_by == "y"


def test_engine_stops_on_stop_string_with_reason():
    llm = LLM(device="cpu")
    base = llm.generate(["1, 2, 3, 4,"], SamplingParams(temperature=0, max_tokens=20))[0]
    assert " 7" in base.text  # the model counts on
    out = llm.generate(["1, 2, 3, 4,"], SamplingParams(temperature=0, max_tokens=20, stop=[" 7"]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == " 7"
    assert out.text == base.text[:base.text.index(" 7")]
    assert llm.engine.kv.pool.num_free_blocks == llm.engine.kv.pool.num_blocks
