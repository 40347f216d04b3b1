"""Which stream chunks count as tokens, and what a request body looks like."""

import pytest

from loadtest.client import build_payload, is_token_chunk
from loadtest.config import Target
from loadtest.workload import RequestSpec


@pytest.mark.parametrize("choice,expected", [
    ({"text": " hello", "finish_reason": None}, True),
    ({"text": "", "finish_reason": None}, True),  # e.g. half of a multi-byte character held back
    ({"text": "", "finish_reason": "length"}, False),  # only the finish reason
    ({"text": " last", "finish_reason": "length"}, True),
    ({"finish_reason": None}, False),
])
def test_completion_chunks(choice, expected):
    assert is_token_chunk(choice, chat=False) is expected


@pytest.mark.parametrize("delta,finish,expected", [
    ({"role": "assistant", "content": ""}, None, False),  # the role announcement
    ({"role": "assistant", "content": "Hi"}, None, True),
    ({"content": "Hi"}, None, True),
    ({"content": ""}, None, True),
    ({"content": ""}, "stop", False),
    ({"reasoning_content": "thinking"}, None, True),
    ({"tool_calls": [{"index": 0}]}, None, True),
    ({}, "stop", False),
])
def test_chat_chunks(delta, finish, expected):
    assert is_token_chunk({"delta": delta, "finish_reason": finish}, chat=True) is expected


def test_payloads_for_both_endpoints():
    tokens = RequestSpec((5, 6, 7), max_tokens=9, prompt_len=3)
    body = build_payload(Target("http://h"), "m", tokens)
    assert body == {"model": "m", "max_tokens": 9, "temperature": 0.0, "stream": True,
                    "stream_options": {"include_usage": True}, "ignore_eos": True, "prompt": [5, 6, 7]}
    chat = build_payload(Target("http://h", endpoint="chat", ignore_eos=False), "m", RequestSpec("hi there", 4, None))
    assert chat["messages"] == [{"role": "user", "content": "hi there"}] and "ignore_eos" not in chat


def test_target_urls():
    assert Target("http://h:1/v1/").url == "http://h:1/v1/completions"
    assert Target("http://h:1", endpoint="chat").url == "http://h:1/v1/chat/completions"
    assert Target("http://h:1/v1").root == "http://h:1"
