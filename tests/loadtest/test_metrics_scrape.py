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


ROOF_BEFORE = """
# TYPE kvserve:model_flops_total counter
kvserve:model_flops_total{model_name="m",phase="prefill"} 1e9
kvserve:model_flops_total{model_name="m",phase="decode"} 2e9
# TYPE kvserve:engine_step_seconds_total counter
kvserve:engine_step_seconds_total{kind="prefill",model_name="m"} 1.0
kvserve:engine_step_seconds_total{kind="decode",model_name="m"} 2.0
# TYPE kvserve:engine_step_flops_total counter
kvserve:engine_step_flops_total{kind="prefill",model_name="m"} 1e9
kvserve:engine_step_flops_total{kind="decode",model_name="m"} 2e9
# TYPE kvserve:engine_step_bytes_total counter
kvserve:engine_step_bytes_total{kind="prefill",model_name="m"} 1e8
kvserve:engine_step_bytes_total{kind="decode",model_name="m"} 4e8
# TYPE kvserve:peak_flops_per_second gauge
kvserve:peak_flops_per_second{model_name="m"} 1e10
# TYPE kvserve:peak_memory_bandwidth_bytes_per_second gauge
kvserve:peak_memory_bandwidth_bytes_per_second{model_name="m"} 1e9
"""


def test_roofline_deltas_by_phase_and_kind_and_busy_time_utilization():
    after = (ROOF_BEFORE.replace('phase="prefill"} 1e9', 'phase="prefill"} 4e9')
             .replace('kind="decode",model_name="m"} 2.0', 'kind="decode",model_name="m"} 6.0')
             .replace('kind="decode",model_name="m"} 2e9', 'kind="decode",model_name="m"} 10e9')
             .replace('kind="decode",model_name="m"} 4e8', 'kind="decode",model_name="m"} 2.4e9'))
    d = metrics_delta(MetricsSnapshot.parse(ROOF_BEFORE), MetricsSnapshot.parse(after))
    assert d.model_flops_by_phase == {"decode": 0.0, "prefill": 3e9}
    assert d.step_seconds_by_kind == {"decode": 4.0, "prefill": 0.0} and d.busy_seconds == 4.0
    assert (d.peak_flops, d.peak_bandwidth) == (1e10, 1e9)
    assert d.mfu_busy == pytest.approx(8e9 / 4.0 / 1e10)
    assert d.mbu_busy == pytest.approx(2e9 / 4.0 / 1e9)
    assert d.to_dict()["mfu_busy"] == d.mfu_busy


def test_a_peak_that_is_not_a_number_means_no_utilization():
    text = ROOF_BEFORE.replace('peak_flops_per_second{model_name="m"} 1e10', 'peak_flops_per_second{model_name="m"} NaN')
    d = metrics_delta(MetricsSnapshot.parse(ROOF_BEFORE), MetricsSnapshot.parse(text))
    assert d.peak_flops is None and d.mfu_busy is None and d.mbu_busy is None


def test_the_report_shows_step_time_flops_and_utilization():
    from rich.console import Console

    from loadtest.report import server_table

    after = ROOF_BEFORE.replace('kind="decode",model_name="m"} 2.0', 'kind="decode",model_name="m"} 5.0')
    d = metrics_delta(MetricsSnapshot.parse(""), MetricsSnapshot.parse(after))
    console = Console(record=True, width=200)
    console.print(server_table(d))
    text = console.export_text()
    assert "Engine step time (s)" in text and "decode 5.00 (83%), prefill 1.00 (17%)" in text
    assert "MFU 5.0% of 10.00 GFLOP/s" in text and "MBU 8.3% of 1.00 GB/s" in text
