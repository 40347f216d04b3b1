"""A server on quantized weights and an 8-bit KV cache: the OpenAI API answers as the offline engine with the
same options does, and /metrics says what was loaded (the cache's dtype and block count, the weights' format
and bytes)."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]


@pytest.mark.parametrize("quantization, kv_cache_dtype", [("w8a8", "int8"), ("int4", "fp8_e4m3"), (None, "auto")])
def test_a_quantized_server_answers_as_the_offline_engine_and_its_metrics_say_what_it_loaded(
        live_server, tiny_llama_dir, parse_metrics, quantization, kv_cache_dtype):
    import openai

    LiveServer, factory = live_server
    options = dict(quantization=quantization, kv_cache_dtype=kv_cache_dtype, device="cpu")
    live = LiveServer(factory(tiny_llama_dir, **options)).start()
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key=live.api_key, max_retries=0)
        model = client.models.list().data[0].id
        served = [client.completions.create(model=model, prompt=p, max_tokens=8, temperature=0).choices[0].text
                  for p in PROMPTS]
        offline = LLM(str(tiny_llama_dir), num_kv_blocks=256, **options)
        expected = [o.outputs[0].text for o in offline.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8))]
        assert served == expected

        with live.client() as http:
            metrics = parse_metrics(http.get("/metrics").text)
        [(labels, value)] = [(dict(k[1]), v) for k, v in metrics.items() if k[0] == "kvserve:cache_config_info"]
        assert value == 1
        assert labels["cache_dtype"] == (kv_cache_dtype if kv_cache_dtype != "auto" else "float32")
        assert labels["num_gpu_blocks"] == "256" and labels["block_size"] == str(offline.engine.config.cache.block_size)
        [(wlabels, weight_bytes)] = [(dict(k[1]), v) for k, v in metrics.items()
                                     if k[0] == "kvserve:model_weight_bytes"]
        assert wlabels["quantization"] == (quantization or "none")
        assert weight_bytes == offline.engine.runner.weight_report.bytes_after
    finally:
        live.stop()
