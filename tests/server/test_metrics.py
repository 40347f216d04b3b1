"""/metrics is exact: after known requests every counter and histogram count is what the definitions in
docs/metrics.md say. A server of its own, so that nothing else is counted."""

from __future__ import annotations

import pytest

from engine import SamplingParams

pytestmark = pytest.mark.timeout(120)

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
                160, 640, 2560]
TOKEN_LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920,
                           7680]
TOKEN_COUNT_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500]  # up to max_model_len = 512
LABEL = (("model_name", "tiny-llama"),)


@pytest.fixture(scope="module")
def workload(own_server, offline_llm, parse_sse):
    """Six requests of known lengths, finished before the test reads /metrics. Returns (prompt tokens,
    completion tokens) per request and how many finished with "stop"."""
    prompt = "The quick brown fox"
    first_token = offline_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1))[0].token_ids[0]
    done = []
    with own_server.client() as c:
        for max_tokens in (1, 3, 5):
            r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True})
            done.append(r.json()["usage"])
        request = {"prompt": prompt, "max_tokens": 4, "ignore_eos": True, "stream": True,
                   "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/completions", json=request) as r:
            done.append(parse_sse(r.iter_lines())[-2]["usage"])
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                 "ignore_eos": True})
        done.append(r.json()["usage"])
        r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                            "stop_token_ids": [first_token]})
        assert r.json()["choices"][0]["finish_reason"] == "stop"
        done.append(r.json()["usage"])
        text = c.get("/metrics").text
    return [(u["prompt_tokens"], u["completion_tokens"]) for u in done], text


def value(parse_metrics, text, name, **labels):
    return parse_metrics(text)[(name, tuple(sorted(dict(LABEL, **labels).items())))]


def test_completion_tokens_are_as_requested(workload):
    requests, _ = workload
    assert [c for _, c in requests] == [1, 3, 5, 4, 2, 1]


def test_every_request_observes_ttft_e2e_and_phases_once(workload, parse_metrics):
    requests, text = workload
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "request_prefill_time_seconds", "request_decode_time_seconds", "request_prompt_tokens",
                 "request_generation_tokens"):
        assert value(parse_metrics, text, f"kvserve:{name}_count") == len(requests), name


def test_token_counters_and_histograms_sum_the_usage(workload, parse_metrics):
    requests, text = workload
    prompt_total, completion_total = sum(p for p, _ in requests), sum(c for _, c in requests)
    assert value(parse_metrics, text, "kvserve:generation_tokens_total") == completion_total
    assert value(parse_metrics, text, "kvserve:prompt_tokens_total") == prompt_total
    assert value(parse_metrics, text, "kvserve:request_generation_tokens_sum") == completion_total
    assert value(parse_metrics, text, "kvserve:request_prompt_tokens_sum") == prompt_total


def test_inter_token_latency_counts_every_gap_and_tpot_every_multi_token_request(workload, parse_metrics):
    requests, text = workload
    assert value(parse_metrics, text, "kvserve:inter_token_latency_seconds_count") == sum(c - 1 for _, c in requests)
    assert value(parse_metrics, text, "kvserve:time_per_output_token_seconds_count") == \
        sum(1 for _, c in requests if c >= 2)


def test_request_success_is_counted_per_finish_reason(workload, parse_metrics):
    _, text = workload
    assert value(parse_metrics, text, "kvserve:request_success_total", finished_reason="length") == 5
    assert value(parse_metrics, text, "kvserve:request_success_total", finished_reason="stop") == 1
    assert value(parse_metrics, text, "kvserve:request_success_total", finished_reason="abort") == 0


def test_gauges_return_to_idle_and_cache_counters_are_consistent(workload, parse_metrics):
    _, text = workload
    assert value(parse_metrics, text, "kvserve:num_requests_running") == 0
    assert value(parse_metrics, text, "kvserve:num_requests_waiting") == 0
    assert value(parse_metrics, text, "kvserve:kv_cache_usage_perc") == 0
    queries = value(parse_metrics, text, "kvserve:prefix_cache_queries_total")
    assert queries >= 6 * 4 and 0 <= value(parse_metrics, text, "kvserve:prefix_cache_hits_total") <= queries
    assert value(parse_metrics, text, "kvserve:num_preemptions_total") == 0


@pytest.mark.parametrize("name,buckets", [
    ("time_to_first_token_seconds", TTFT_BUCKETS),
    ("inter_token_latency_seconds", TOKEN_LATENCY_BUCKETS),
    ("time_per_output_token_seconds", TOKEN_LATENCY_BUCKETS),
    ("e2e_request_latency_seconds", REQUEST_LATENCY_BUCKETS),
    ("request_queue_time_seconds", REQUEST_LATENCY_BUCKETS),
    ("request_prefill_time_seconds", REQUEST_LATENCY_BUCKETS),
    ("request_decode_time_seconds", REQUEST_LATENCY_BUCKETS),
    ("request_prompt_tokens", TOKEN_COUNT_BUCKETS),
    ("request_generation_tokens", TOKEN_COUNT_BUCKETS),
])
def test_histograms_use_vllms_buckets(workload, parse_metrics, name, buckets):
    _, text = workload
    les = sorted(float(dict(labels)["le"]) for (sample, labels) in parse_metrics(text)
                 if sample == f"kvserve:{name}_bucket")
    assert les == [float(b) for b in buckets] + [float("inf")]
