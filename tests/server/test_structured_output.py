"""Structured output over HTTP: every spelling a client may use (OpenAI's response_format, vLLM's
structured_outputs and guided_* fields), the official `openai` client's `parse`, streaming, n > 1, and a 400
naming the field for a constraint that cannot be compiled. The tiny random model samples at temperature 1.0,
so valid output is the grammar's doing."""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import pytest

pytest.importorskip("xgrammar")

SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "pop": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 5},
                                                    "maxItems": 2}},
          "required": ["city", "pop", "tags"], "additionalProperties": False}


def chat(client, **body):
    body.setdefault("messages", [{"role": "user", "content": "Give me JSON."}])
    body.setdefault("max_tokens", 120)
    return client.post("/v1/chat/completions", json=body)


def test_openai_client_parse_with_a_pydantic_model(server):
    openai = pytest.importorskip("openai")
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        city: Literal["Paris", "Oslo"]
        celsius: int
        note: str = Field(max_length=6)

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key)
    for seed in range(3):
        completion = client.chat.completions.parse(model=server.ctx.model_name, response_format=Weather, seed=seed,
                                                   messages=[{"role": "user", "content": "Weather?"}],
                                                   temperature=1.0, max_tokens=100)
        message = completion.choices[0].message
        assert completion.choices[0].finish_reason == "stop"
        assert isinstance(message.parsed, Weather) and len(message.parsed.note) <= 6


def test_response_format_json_schema_on_chat_and_completions_with_n(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    r = chat(client, response_format=fmt, n=2, seed=1, temperature=1.0)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    r = client.post("/v1/completions", json={"prompt": "JSON:", "response_format": fmt, "max_tokens": 120,
                                             "seed": 2, "temperature": 1.0})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), SCHEMA)


def test_json_object(client):
    r = chat(client, response_format={"type": "json_object"}, temperature=0.0, max_tokens=60)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert text.startswith("{")  # the random model may run out of tokens before it closes the object
    if r.json()["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("body", [
    {"guided_choice": ["alpha", "beta"]},
    {"structured_outputs": {"choice": ["alpha", "beta"]}},
    {"guided_regex": "(alpha|beta)"},
    {"structured_outputs": {"grammar": 'root ::= "alpha" | "beta"'}},
    {"guided_grammar": 'root ::= "alpha" | "beta"'},
    {"guided_json": {"enum": ["alpha", "beta"]}},
])
def test_vllm_spellings(client, body):
    r = client.post("/v1/completions", json={"prompt": "pick:", "max_tokens": 10, "temperature": 1.0, "n": 3,
                                             "seed": 4, **body})
    assert r.status_code == 200, r.text
    texts = [c["text"].strip('"') for c in r.json()["choices"]]
    assert set(texts) <= {"alpha", "beta"} and all(c["finish_reason"] == "stop" for c in r.json()["choices"])


def test_streaming_deltas_add_up_to_a_match(client):
    regex = r"[a-z]{3}-[0-9]{3}"
    body = {"messages": [{"role": "user", "content": "id?"}], "guided_regex": regex, "stream": True,
            "max_tokens": 30, "temperature": 1.0, "seed": 3}
    text, finish = "", None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
    assert re.fullmatch(regex, text) and finish == "stop"


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format"),
    ({"guided_json": {"type": "object", "properties": {"a": {"type": 3}}}}, "guided_json"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"structured_outputs": {"grammar": "root ::= ("}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"guided_choice": []}, "guided_choice"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
    ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
    ({"guided_regex": "a+", "min_tokens": 3}, "min_tokens"),
])
def test_bad_constraints_are_400_naming_the_field(client, body, param):
    r = chat(client, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
