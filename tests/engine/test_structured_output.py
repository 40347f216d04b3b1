"""Structured output in the engine: a JSON schema, a regex, a choice or a grammar constrains every sampled token.

A random tiny model (the default model's tokenizer, so xgrammar sees a real vocabulary) samples at
temperature 1.0: left alone it writes noise, so whatever parses is the grammar's doing. Strings are bounded
(maxLength, enum, pattern) because a random model would otherwise close a string only by chance.
"""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import torch

pytest.importorskip("xgrammar")

from engine import LLM, SamplingParams  # noqa: E402
from engine.sample.bitmask import allowed_tokens, apply_token_bitmask, apply_token_bitmask_reference  # noqa: E402
from engine.sampling_params import ParamError  # noqa: E402
from engine.structured.spec import StructuredOutputsParams  # noqa: E402

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "ok": {"type": "boolean"}}, "required": ["color", "ok"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 4},
                                               "minItems": 1, "maxItems": 3}}, "required": ["tags"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"], "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["code"]},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer"}, "roles": {"type": "array", "items": {"enum": ["admin", "dev"]}, "maxItems": 2}},
        "required": ["id", "roles"]}, "active": {"type": "boolean"}}, "required": ["user", "active"]},
    {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "integer", "minimum": 1}},
     "required": ["kind", "r"]},
]


@pytest.fixture(scope="module")
def path(tmp_path_factory, one_torch_thread):
    from engine.models.tiny import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("structured") / "tiny", max_position_embeddings=512)


@pytest.fixture(scope="module")
def llm(path):
    llm = LLM(str(path), num_kv_blocks=256, seed=0)
    yield llm
    llm.shutdown()


def constrained(spec: dict, **kw) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_tokens=kw.pop("max_tokens", 120),
                          structured_outputs=StructuredOutputsParams(**spec), **kw)


def test_json_schemas_always_parse_and_validate_at_temperature_one(llm):
    params = [constrained({"json": s}, n=3, seed=7 + i) for i, s in enumerate(SCHEMAS)]
    outs = llm.generate(["Answer in JSON:"] * len(SCHEMAS), params)
    for schema, out in zip(SCHEMAS, outs):
        for choice in out.outputs:
            assert choice.finish_reason == "stop", (schema, choice.text)
            jsonschema.validate(json.loads(choice.text), schema)


def test_json_object_is_an_object(llm):
    outs = llm.generate(["{"] * 3, [constrained({"json_object": True}, seed=s, max_tokens=60) for s in range(3)])
    for out in outs:
        assert out.text.startswith("{")
        if out.finish_reason == "stop":  # a random model may not close an unbounded object in time
            assert isinstance(json.loads(out.text), dict)


def test_regex_and_choice_match(llm):
    regex = r"[a-z]{2,5}@[a-z]{2,4}\.(com|org)"
    outs = llm.generate(["email:"] * 4, [constrained({"regex": regex}, seed=s) for s in range(4)])
    for out in outs:
        assert re.fullmatch(regex, out.text), out.text
    choices = ["yes", "no", "maybe \"so\""]
    outs = llm.generate(["?"] * 6, [constrained({"choice": choices}, seed=s) for s in range(6)])
    assert all(o.text in choices and o.finish_reason == "stop" for o in outs)


def test_ebnf_grammar(llm):
    grammar = 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]?'
    outs = llm.generate(["sum:"] * 3, [constrained({"grammar": grammar}, seed=s) for s in range(3)])
    for out in outs:
        assert re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", out.text), out.text


def test_greedy_rows_without_grammar_are_untouched_in_a_mixed_batch(llm):
    free = SamplingParams(temperature=0, max_tokens=12)
    alone = llm.generate(["The sea is"], free)[0].token_ids
    mixed = llm.generate(["The sea is", "x"], [free, constrained({"choice": ["a", "b"]}, seed=1)])
    assert mixed[0].token_ids == alone
    assert mixed[1].text in ("a", "b")


def test_stop_strings_still_apply(llm):
    out = llm.generate(["list:"], constrained({"regex": "[a-c]{3},[a-c]{3}"}, seed=3, stop=[","]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == "," and re.fullmatch("[a-c]{3}", out.text)


def test_matcher_state_survives_preemption(path):
    """A cache too small for all sequences at once forces recompute preemption; seeded output is the same as
    with room for everyone, and still valid."""
    schema = SCHEMAS[6]
    params = [constrained({"json": schema}, seed=s, max_tokens=40) for s in range(4)]
    roomy = LLM(str(path), num_kv_blocks=256, seed=0, block_size=4)
    tight = LLM(str(path), num_kv_blocks=16, seed=0, block_size=4)
    try:
        a = roomy.generate(["JSON please:"] * 4, params)
        b = tight.generate(["JSON please:"] * 4, params)
        assert tight.engine.scheduler.num_preemptions_total > 0
        assert [o.token_ids for o in a] == [o.token_ids for o in b]
        for o in b:
            if o.finish_reason == "stop":
                jsonschema.validate(json.loads(o.text), schema)
    finally:
        roomy.shutdown()
        tight.shutdown()


def test_asynchronous_scheduling_pauses_for_grammars_and_gives_the_same_output(path):
    params = [constrained({"json": SCHEMAS[0]}, seed=5), SamplingParams(temperature=1.0, seed=9, max_tokens=20)]
    sync = LLM(str(path), num_kv_blocks=128, async_scheduling=False)
    overlapped = LLM(str(path), num_kv_blocks=128, async_scheduling=True)
    try:
        a = sync.generate(["a", "b"], params)
        b = overlapped.generate(["a", "b"], params)
        assert [o.token_ids for o in a] == [o.token_ids for o in b]
        jsonschema.validate(json.loads(b[0].text), SCHEMAS[0])
    finally:
        sync.shutdown()
        overlapped.shutdown()


def test_uncompilable_constraints_are_param_errors_before_anything_runs(llm):
    with pytest.raises(ParamError) as e:
        llm.generate(["x"], constrained({"json": {"type": "object", "properties": {"a": {"type": "nope"}}}}))
    assert e.value.param == "structured_outputs"
    with pytest.raises(ParamError) as e:
        llm.generate(["x"], constrained({"regex": "(unclosed"}))
    assert e.value.param == "structured_outputs"
    with pytest.raises(ParamError) as e:
        StructuredOutputsParams(json={"type": "object"}, regex="a")
    assert e.value.param == "structured_outputs"
    with pytest.raises(ParamError) as e:
        SamplingParams(min_tokens=2, structured_outputs=StructuredOutputsParams(regex="a+"))
    assert e.value.param == "min_tokens"
    assert not llm.engine.has_unfinished_requests()


def test_bitmask_unpacks_bit_t_as_token_t():
    vocab = 70  # three 32-bit words, the last one partly used
    allowed = np.zeros(vocab, bool)
    allowed[[0, 5, 31, 32, 63, 64, 69]] = True
    words = np.zeros(3, np.uint32)
    for t in np.flatnonzero(allowed):
        words[t // 32] |= np.uint32(1) << np.uint32(t % 32)
    bitmask = torch.from_numpy(words.view(np.int32)).unsqueeze(0)
    assert allowed_tokens(bitmask, vocab)[0].tolist() == allowed.tolist()
    logits = torch.randn(3, vocab)
    rows = torch.cat([torch.full((1, 3), -1, dtype=torch.int32), bitmask, torch.full((1, 3), -1, dtype=torch.int32)])
    out = apply_token_bitmask(logits.clone(), rows)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])  # rows without a grammar
    assert torch.isinf(out[1][~torch.from_numpy(allowed)]).all()
    assert torch.equal(out[1][torch.from_numpy(allowed)], logits[1][torch.from_numpy(allowed)])


def test_xgrammar_kernel_matches_the_torch_reference():
    g = torch.Generator().manual_seed(0)
    for vocab in (32, 100, 49152):
        words = -(-vocab // 32)
        bitmask = torch.randint(-2**31, 2**31 - 1, (5, words), dtype=torch.int32, generator=g)
        logits = torch.randn(5, vocab, generator=g)
        assert torch.equal(apply_token_bitmask(logits.clone(), bitmask), apply_token_bitmask_reference(logits, bitmask))
        strided = torch.randn(vocab, 5, generator=g).t()  # not contiguous, as a one-row matmul's output can be
        assert torch.equal(apply_token_bitmask(strided.clone(), bitmask), apply_token_bitmask_reference(strided, bitmask))


def test_noise_is_never_zero_so_a_masked_token_can_never_win():
    """The draw is argmax(p / noise): a zero noise would turn a masked token's 0 / 0 into NaN, which wins."""
    from engine.sample import noise

    bits = torch.tensor([0, 2**24 - 1, 2**24 - 2], dtype=torch.int64) << 8  # the extremes of the 24-bit draw
    original = noise.mix32
    try:
        noise.mix32 = lambda x: x  # the hash is a bijection of 32-bit values: feed the extremes straight through
        out = noise.exponential_noise(torch.zeros(1, dtype=torch.int64), bits)
    finally:
        noise.mix32 = original
    assert (out > 0).all(), out
    probs = torch.tensor([[0.0, 0.5, 0.5]])
    assert (probs / out).argmax().item() != 0
