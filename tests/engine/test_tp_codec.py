"""The engine -> worker messages: every step type round-trips exactly through the explicit binary encoding,
anything else is refused with a clear error (never unpickled), and the engine config travels as JSON."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.executor.codec import DecodeError, decode_step, encode_step
from engine.step import CachedSeq, NewSeq, SamplingOptions, SchedulerOutput

ids = st.lists(st.integers(0, 2**31), max_size=40).map(tuple)
big = st.integers(-(2**80), 2**80)  # top_k and seeds are unbounded Python ints (seed + choice index may pass 2**63)
finite = st.floats(allow_nan=False)
sampling = st.builds(SamplingOptions, temperature=finite, top_k=big, top_p=finite, min_p=finite,
                     presence_penalty=finite, frequency_penalty=finite, repetition_penalty=finite,
                     seed=st.none() | big, logprobs=st.none() | st.integers(0, 20), min_tokens=st.integers(0, 10**6),
                     forbidden_ids=ids)
names = st.text(max_size=12)  # any Unicode, e.g. "req-é#1"
new_seq = st.builds(NewSeq, request_id=names, token_ids=ids, num_prompt_tokens=st.integers(0, 10**6),
                    block_ids=ids, start=st.integers(0, 10**6), num_new=st.integers(0, 10**6),
                    sample=st.booleans(), sampling=sampling)
cached_seq = st.builds(CachedSeq, request_id=names, new_token_ids=ids, new_block_ids=ids,
                       start=st.integers(0, 10**6), num_new=st.integers(0, 10**6), sample=st.booleans())
counts = st.integers(0, 2**62)
steps = st.builds(SchedulerOutput, seqs=st.lists(new_seq | cached_seq, max_size=6).map(tuple),
                  finished_ids=st.lists(names, max_size=4).map(tuple), preempted_ids=st.lists(names, max_size=4).map(tuple),
                  num_scheduled_tokens=counts, num_prompt_tokens=counts, prefix_cache_queries=counts,
                  prefix_cache_hits=counts)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_every_step_round_trips_exactly(step):
    assert decode_step(encode_step(step)) == step


def test_a_typical_decode_step_keeps_its_types():
    opts = SamplingOptions(temperature=0.0, seed=2**63 + 1, logprobs=2, min_tokens=3, forbidden_ids=(2,))
    step = SchedulerOutput((NewSeq("a", (5, 6, 7), 3, (4,), 0, 3, True, opts), CachedSeq("b", (9,), (), 12, 1, True)),
                           ("x",), (), 4, 3, 3, 0)
    got = decode_step(encode_step(step))
    assert type(got.seqs[0]) is NewSeq and type(got.seqs[1]) is CachedSeq
    assert got.seqs[0].sampling.seed == 2**63 + 1 and got.seqs[0].sampling.greedy


@pytest.mark.parametrize("payload", [
    pickle.dumps(SchedulerOutput((), (), (), 0, 0, 0, 0)),  # a pickle is bytes like any other: refused
    b"",
    b"\x01\x00\x00\x00\x07",  # one sequence with an unknown tag
])
def test_anything_but_an_encoded_step_is_refused(payload):
    with pytest.raises(DecodeError, match="malformed step message"):
        decode_step(payload)


def test_a_truncated_or_padded_step_is_refused():
    data = encode_step(SchedulerOutput((CachedSeq("a", (1, 2), (3,), 5, 1, True),), ("b",), (), 1, 0, 0, 0))
    for cut in (1, 7, len(data) - 1):
        with pytest.raises(DecodeError):
            decode_step(data[:cut])
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode_step(data + b"\0")


def test_nothing_on_the_worker_channel_imports_pickle():
    import ast
    from pathlib import Path

    import engine.executor as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for a in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "cPickle", "dill", "cloudpickle"}, path.name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_the_engine_config_travels_as_json_and_comes_back_equal(arch, tiny_model_dir):
    import json

    from engine.config import EngineArgs
    from engine.executor.config_codec import decode_config, encode_config

    config = EngineArgs(model=tiny_model_dir(arch), device="cpu", tensor_parallel_size=2, block_size=4).resolve()
    data = encode_config(config)
    json.loads(data)  # plain JSON
    back = decode_config(data)
    assert back == config
    assert back.model.hf_config.to_dict() == config.model.hf_config.to_dict()  # hf_config is compare=False
