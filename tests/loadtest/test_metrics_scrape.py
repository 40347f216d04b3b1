"""/metrics: parsing Prometheus text and the before/after deltas the load tester reports."""

import pytest

from loadtest.metrics_scrape import MetricsSnapshot, metrics_delta

BEFORE = """
# TYPE kvserve:num_preemptions_total counter
kvserve:num_preemptions_total{engine="0",model_name="m"} 2
kvserve:num_preemptions_total{engine="1",model_name="m"} 1
# TYPE kvserve:prefix_cache_queries_total counter
kvserve:prefix_cache_queries_total{model_name="m"} 100
# TYPE kvserve:prefix_cache_hits_total counter
kvserve:prefix_cache_hits_total{model_name="m"} 10
# TYPE kvserve:request_queue_time_seconds histogram
kvserve:request_queue_time_seconds_bucket{le="+Inf",model_name="m"} 4
kvserve:request_queue_time_seconds_sum{model_name="m"} 1.0
kvserve:request_queue_time_seconds_count{model_name="m"} 4
# TYPE kvserve:request_success_total counter
kvserve:request_success_total{finished_reason="stop",model_name="m"} 3
kvserve:request_success_total{finished_reason="length",model_name="m"} 1
# TYPE kvserve:prompt_tokens_total counter
kvserve:prompt_tokens_total{model_name="m"} 400
# TYPE kvserve:generation_tokens_total counter
kvserve:generation_tokens_total{model_name="m"} 50
"""

AFTER = """
# TYPE kvserve:num_preemptions_total counter
kvserve:num_preemptions_total{engine="0",model_name="m"} 5
kvserve:num_preemptions_total{engine="1",model_name="m"} 1
# TYPE kvserve:prefix_cache_queries_total counter
kvserve:prefix_cache_queries_total{model_name="m"} 900
# TYPE kvserve:prefix_cache_hits_total counter
kvserve:prefix_cache_hits_total{model_name="m"} 610
# TYPE kvserve:request_queue_time_seconds histogram
kvserve:request_queue_time_seconds_bucket{le="+Inf",model_name="m"} 14
kvserve:request_queue_time_seconds_sum{model_name="m"} 1.5
kvserve:request_queue_time_seconds_count{model_name="m"} 14
# TYPE kvserve:request_success_total counter
kvserve:request_success_total{finished_reason="stop",model_name="m"} 3
kvserve:request_success_total{finished_reason="length",model_name="m"} 9
kvserve:request_success_total{finished_reason="abort",model_name="m"} 2
# TYPE kvserve:prompt_tokens_total counter
kvserve:prompt_tokens_total{model_name="m"} 1200
# TYPE kvserve:generation_tokens_total counter
kvserve:generation_tokens_total{model_name="m"} 1330
"""


def test_deltas_are_after_minus_before_summed_over_labels():
    d = metrics_delta(MetricsSnapshot.parse(BEFORE), MetricsSnapshot.parse(AFTER))
    assert d.prefix == "kvserve:"
    assert d.preemptions == 3
    assert (d.prefix_cache_queries, d.prefix_cache_hits) == (800, 600)
    assert d.prefix_cache_hit_rate == 0.75
    assert d.mean_queue_time_s == pytest.approx(0.05)  # 0.5 s over 10 requests
    assert (d.prompt_tokens, d.generation_tokens) == (800, 1280)
    assert d.requests_by_finished_reason == {"abort": 2, "length": 8, "stop": 0}
    assert d.requests_succeeded == 10


def test_vllm_prefix_is_accepted_and_missing_counters_are_none():
    text = "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total 7\n"
    d = metrics_delta(MetricsSnapshot.parse(""), MetricsSnapshot.parse(text))
    assert d.prefix == "vllm:" and d.generation_tokens == 7
    assert d.preemptions is None and d.prefix_cache_hit_rate is None and d.mean_queue_time_s is None
    assert d.requests_succeeded is None
    assert d.to_dict()["mean_queue_time_ms"] is None


def test_a_server_without_kvserve_or_vllm_metrics_gives_no_delta():
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n"
    assert metrics_delta(MetricsSnapshot.parse(text), MetricsSnapshot.parse(text)) is None
