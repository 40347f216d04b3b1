"""Workload generation: random token prompts, random-word chat prompts, shared prefixes, prompt files."""

import json

import numpy as np
import pytest

from loadtest.config import WorkloadConfig
from loadtest.dataset import load_prompt_file
from loadtest.lengths import LengthSpec
from loadtest.workload import build_workload


def rng(seed=0):
    return np.random.default_rng(seed)


def test_random_token_prompts_have_the_drawn_lengths_and_ids_in_range():
    cfg = WorkloadConfig(num_requests=200, input_len=LengthSpec.uniform(32, 256),
                         output_len=LengthSpec.uniform(8, 16), token_id_range=(100, 200))
    specs = build_workload(cfg, "completions", rng())
    assert len(specs) == 200
    for s in specs:
        assert isinstance(s.prompt, tuple) and len(s.prompt) == s.prompt_len
        assert 32 <= s.prompt_len <= 256 and 8 <= s.max_tokens <= 16
        assert all(100 <= t < 200 for t in s.prompt)
    assert s.payload_prompt() == list(s.prompt)  # sent as a JSON list of ints


def test_the_same_seed_gives_the_same_workload():
    cfg = WorkloadConfig(num_requests=20, input_len=LengthSpec.normal(64, 16))
    assert build_workload(cfg, "completions", rng(5)) == build_workload(cfg, "completions", rng(5))
    assert build_workload(cfg, "completions", rng(5)) != build_workload(cfg, "completions", rng(6))


def test_chat_prompts_are_words_one_per_requested_token():
    cfg = WorkloadConfig(num_requests=10, input_len=LengthSpec.fixed(50))
    for s in build_workload(cfg, "chat", rng()):
        assert isinstance(s.prompt, str) and len(s.prompt.split()) == 50 and s.prompt_len is None


def test_shared_prefix_groups_share_their_prefix_and_differ_after_it():
    cfg = WorkloadConfig(num_requests=12, input_len=LengthSpec.uniform(5, 9), prefix_groups=3, prefix_len=64)
    specs = build_workload(cfg, "completions", rng())
    assert [s.group for s in specs] == [0, 1, 2] * 4
    prefixes = {g: specs[g].prompt[:64] for g in range(3)}
    assert len(set(prefixes.values())) == 3
    for s in specs:
        assert s.prompt[:64] == prefixes[s.group]
        assert 64 + 5 <= len(s.prompt) <= 64 + 9 and s.prompt_len == len(s.prompt)
    assert len({s.prompt[64:] for s in specs}) == 12  # every suffix is distinct


def test_shared_prefix_chat_prompts_start_with_the_group_text():
    cfg = WorkloadConfig(num_requests=4, input_len=LengthSpec.fixed(3), prefix_groups=2, prefix_len=20)
    specs = build_workload(cfg, "chat", rng())
    head = [" ".join(s.prompt.split()[:20]) for s in specs]
    assert head[0] == head[2] and head[1] == head[3] and head[0] != head[1]


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_prompt_file_reads_sharegpt_and_plain_prompt_lines(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
        {"prompt": "Plain prompt", "max_tokens": 7},
        "",
        {"conversations": [{"from": "gpt", "value": "no human turn"}]},
        {"conversations": [{"from": "system", "value": "s"}, {"from": "user", "value": "second style"}]},
    ])
    pf = load_prompt_file(path)
    assert [(e.prompt, e.max_tokens) for e in pf.entries] == [("Hi there", None), ("Plain prompt", 7), ("second style", None)]
    assert pf.skipped == 1


def test_prompt_file_may_be_a_json_array(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"conversations": [{"from": "human", "value": "b"}]}]))
    assert [e.prompt for e in load_prompt_file(path).entries] == ["a", "b"]


@pytest.mark.parametrize("line,match", [
    ("{not json", "line 2 is not JSON"),
    ('{"prompt": ""}', "non-empty string"),
    ('{"prompt": "x", "max_tokens": 0}', "max_tokens"),
    ('{"text": "x"}', "'prompt' string or a 'conversations' list"),
    ("[1, 2]", "expected a JSON object"),
])
def test_a_malformed_line_is_an_error_naming_it(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=match):
        load_prompt_file(path)


def test_dataset_workload_uses_the_files_max_tokens_else_output_len_and_cycles(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "a", "max_tokens": 3}, {"prompt": "b"}, {"prompt": "c"}])
    cfg = WorkloadConfig(num_requests=7, output_len=LengthSpec.fixed(11), dataset=path)
    specs = build_workload(cfg, "completions", rng())
    assert len(specs) == 7
    assert sorted(s.prompt for s in specs[:3]) == ["a", "b", "c"]  # a full permutation before repeating
    assert all(s.max_tokens == (3 if s.prompt == "a" else 11) for s in specs)
    assert build_workload(cfg, "completions", rng()) == specs


def test_bad_workload_settings_are_rejected():
    with pytest.raises(ValueError, match="num_requests"):
        WorkloadConfig(num_requests=0)
    with pytest.raises(ValueError, match="shared_prefix_len"):
        WorkloadConfig(prefix_groups=2, prefix_len=0)
    with pytest.raises(ValueError, match="token_id_range"):
        WorkloadConfig(token_id_range=(5, 5))
