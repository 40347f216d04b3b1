"""The real default model (SmolLM2-135M-Instruct) served with kvserve's tool template
(`--chat-template smollm2-tools`): a forced call, the tool result sent back, and a final answer.

SmolLM2-135M does not decide to call a tool on its own under `tool_choice: "auto"` (it answers in prose),
so the call is forced with a named `tool_choice`; what this shows on a real model is that the forced call
is well formed, and that the conversation with the call and its result renders and generates an answer."""

from __future__ import annotations

import json

import jsonschema
import pytest

pytest.importorskip("xgrammar")
openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}


def test_default_model_makes_a_forced_call_then_answers_from_the_tool_result(live_server):
    from engine.config import EngineArgs
    from engine.engine import LLMEngine
    from server.chat_template import load_chat_template

    LiveServer, _ = live_server
    live = LiveServer(lambda: LLMEngine.from_args(EngineArgs(num_kv_blocks=256)),
                      chat_template=load_chat_template("smollm2-tools")).start()
    try:
        oai = openai.OpenAI(base_url=live.url + "/v1", api_key=live.api_key, max_retries=0)
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = oai.chat.completions.create(model=live.ctx.model_name, messages=messages, tools=[WEATHER],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            temperature=0, max_tokens=60)
        assert first.choices[0].finish_reason == "tool_calls"
        call = first.choices[0].message.tool_calls[0]
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"}]
        final = oai.chat.completions.create(model=live.ctx.model_name, messages=messages, tools=[WEATHER],
                                            temperature=0, max_tokens=40)
        choice = final.choices[0]
        assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
        assert choice.message.content
    finally:
        live.stop()
