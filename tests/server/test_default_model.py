"""The real default model (SmolLM2-135M-Instruct) over HTTP: greedy output equals `LLM.generate`.

One model load: the offline reference runs first, then the same engine is handed to the server's engine
thread (the test thread never touches it again). The prompts are shorter than one KV block, so nothing the
offline run cached can be reused and change the server's computation."""

from __future__ import annotations

import pytest

from engine import SamplingParams

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

PROMPTS = ["The capital of France is", "def add(a, b):"]


def test_greedy_http_output_equals_offline_generate_on_the_default_model(live_server):
    from engine import LLM

    llm = LLM()
    params = SamplingParams(temperature=0, max_tokens=16)
    expected = llm.generate(PROMPTS, params)
    chat_ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)
    expected_chat = llm.generate([chat_ids], params)[0]
    assert all(len(e.prompt_token_ids) < 16 for e in expected)

    LiveServer, _ = live_server
    live = LiveServer(lambda: llm.engine).start()
    try:
        with live.client() as client:
            for prompt, want in zip(PROMPTS, expected):
                r = client.post("/v1/completions", json={"model": "SmolLM2-135M-Instruct", "prompt": prompt,
                                                         "temperature": 0, "max_tokens": 16})
                choice = r.json()["choices"][0]
                assert choice["text"] == want.text
                assert choice["finish_reason"] == want.finish_reason
            r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What is 2+2?"}],
                                                          "temperature": 0, "max_tokens": 16})
            assert r.json()["choices"][0]["message"]["content"] == expected_chat.text
    finally:
        live.stop()
