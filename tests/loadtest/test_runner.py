"""End to end against the fake streaming server: what the runner measures is what the server did.

The fake sends the first token `ttft_s` after the request arrives and then one chunk every `itl_s`, on an
absolute schedule. A measurement can never be early; the upper tolerances allow for the client's own
cost per request on a busy 2-core CI machine, and still fail for a wrong definition (TTFT taken at the
role chunk or at the end of the stream, a gap lost or double-counted).
"""

import asyncio
import dataclasses
import math

import pytest

from loadtest.config import LoadConfig, LoadShape, Slo, Target, WorkloadConfig
from loadtest.lengths import LengthSpec
from loadtest.runner import ModelLookupError, run_load, run_load_sync

TTFT, ITL = 0.200, 0.050
LATE = 0.040  # how late a timestamp may be taken on a loaded machine


def config(url, n=4, out=5, **shape):
    return LoadConfig(Target(url), WorkloadConfig(num_requests=n, input_len=LengthSpec.fixed(16),
                                                  output_len=LengthSpec.fixed(out)), LoadShape(**shape))


def test_ttft_itl_and_tpot_match_the_injected_delays(fake_server):
    with fake_server(lambda n, body: dict(ttft_s=TTFT, itl_s=ITL)) as srv:
        result = run_load_sync(config(srv.url, n=3, out=6, max_concurrency=1))
    assert result.stats.completed == 3
    for r in result.records:
        assert TTFT - 0.002 <= r.ttft_s <= TTFT + LATE
        assert len(r.itl_s) == 5
        for gap in r.itl_s:
            assert gap == pytest.approx(ITL, abs=0.020)
        assert sum(r.itl_s) / 5 == pytest.approx(ITL, abs=0.005)
        assert r.output_tokens == 6 and r.output_tokens_source == "usage"
        assert r.tpot_s == pytest.approx((r.e2el_s - r.ttft_s) / 5)
        assert r.e2el_s == pytest.approx(r.ttft_s + sum(r.itl_s), abs=1e-9)
    s = result.stats
    assert TTFT * 1e3 - 2 <= s.ttft_ms.mean <= (TTFT + LATE) * 1e3
    assert s.tpot_ms.mean == pytest.approx(ITL * 1e3, abs=5)
    assert s.itl_ms.median == pytest.approx(ITL * 1e3, abs=5)


def test_every_request_is_accounted_for_and_percentiles_are_ordered(fake_server):
    with fake_server(lambda n, body: dict(ttft_s=0.01 * (n % 5), itl_s=0.005)) as srv:
        result = run_load_sync(config(srv.url, n=20, out=4))
    assert [r.index for r in result.records] == list(range(20))
    assert result.stats.completed + result.stats.failed == 20 == len(srv.requests)
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        s = getattr(result.stats, name)
        assert s.median <= s.p90 <= s.p95 <= s.p99
    assert result.stats.total_output_tokens == 80 and result.stats.total_input_tokens == 320


def test_the_request_body_asks_for_a_stream_with_usage_and_exact_lengths(fake_server):
    with fake_server() as srv:
        result = run_load_sync(dataclasses.replace(config(srv.url, n=2, out=7), target=Target(srv.url, api_key="sk-test")))
    body = srv.requests[0]
    assert body["model"] == srv.model  # resolved from GET /v1/models
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["max_tokens"] == 7
    assert isinstance(body["prompt"], list) and len(body["prompt"]) == 16 and all(isinstance(t, int) for t in body["prompt"])
    assert srv.headers[0]["authorization"] == "Bearer sk-test"
    assert result.model == srv.model


def test_failures_are_counted_by_status_code_and_left_out_of_latencies(fake_server):
    statuses = {1: 429, 4: 429, 5: 500}
    with fake_server(lambda n, body: dict(status=statuses.get(n, 200), ttft_s=0.02)) as srv:
        result = run_load_sync(config(srv.url, n=8, max_concurrency=1))
    s = result.stats
    assert (s.completed, s.failed) == (5, 3)
    assert s.failed_by == {"429": 2, "500": 1}
    bad = [r for r in result.records if not r.ok]
    assert all(r.ttft_s is None and "fake" in r.error for r in bad)
    assert s.total_output_tokens == 25


def test_an_error_inside_the_stream_is_a_failure(fake_server):
    with fake_server(lambda n, body: dict(stream_error=n == 0)) as srv:
        result = run_load_sync(config(srv.url, n=2, max_concurrency=1))
    assert result.stats.failed_by == {"stream_error": 1}
    assert "fake engine failure" in result.records[0].error


def test_connection_errors_are_counted_by_exception_type(closed_port):
    cfg = dataclasses.replace(config(f"http://127.0.0.1:{closed_port}", n=3), target=Target(f"http://127.0.0.1:{closed_port}", model="m"),
                              scrape_metrics=False)
    result = run_load_sync(cfg)
    assert result.stats.completed == 0 and result.stats.failed_by == {"ConnectError": 3}


def test_without_a_model_and_without_a_server_the_lookup_fails_clearly(closed_port):
    with pytest.raises(ModelLookupError, match="/v1/models"):
        run_load_sync(config(f"http://127.0.0.1:{closed_port}"))


def test_output_tokens_fall_back_to_counting_chunks_when_usage_is_absent(fake_server):
    with fake_server(lambda n, body: dict(usage=False)) as srv:
        result = run_load_sync(config(srv.url, n=2, out=9))
    assert all(r.output_tokens == 9 and r.output_tokens_source == "chunks" for r in result.records)
    assert result.stats.output_tokens_counted_from_chunks == 2


def test_chat_ignores_the_role_chunk_when_timing_the_first_token(fake_server):
    with fake_server(lambda n, body: dict(ttft_s=TTFT, itl_s=0.01)) as srv:
        cfg = dataclasses.replace(config(srv.url, n=2, out=3, max_concurrency=1), target=Target(srv.url, endpoint="chat"))
        result = run_load_sync(cfg)
    assert srv.requests[0]["messages"][0]["role"] == "user"
    assert all(TTFT - 0.002 <= r.ttft_s <= TTFT + LATE and r.output_tokens == 3 for r in result.records)


def test_max_concurrency_bounds_the_requests_in_flight(fake_server):
    with fake_server(lambda n, body: dict(ttft_s=0.02, itl_s=0.005)) as srv:
        result = run_load_sync(config(srv.url, n=9, max_concurrency=3))
    assert srv.max_in_flight == 3
    assert result.stats.completed == 9


def test_warmup_requests_are_sent_first_and_left_out(fake_server):
    with fake_server() as srv:
        result = run_load_sync(config(srv.url, n=4, warmup_requests=3))
    assert len(srv.requests) == 7 and len(result.records) == 4
    assert (result.warmup.requests, result.warmup.failed) == (3, 0)


def test_requests_leave_on_the_arrival_schedule(fake_server):
    with fake_server() as srv:
        result = run_load_sync(dataclasses.replace(config(srv.url, n=6, request_rate=40.0), seed=3))
    for r in result.records:
        assert r.scheduled_s - 0.001 <= r.sent_s <= r.scheduled_s + LATE
    assert result.records[-1].scheduled_s > 0.0


def test_goodput_with_slos_that_some_requests_meet(fake_server):
    # odd arrivals are slow to start: they miss ttft:100 ms
    with fake_server(lambda n, body: dict(ttft_s=0.25 if n % 2 else 0.01, itl_s=0.005)) as srv:
        cfg = dataclasses.replace(config(srv.url, n=6, max_concurrency=2), slos=(Slo("ttft", 100), Slo("tpot", 40)))
        result = run_load_sync(cfg)
    s = result.stats
    assert s.good_requests == 3
    assert s.goodput == pytest.approx(3 / s.duration_s)


def test_server_metrics_deltas_come_from_metrics_scrapes_around_the_run(fake_server):
    with fake_server(lambda n, body: dict(preempted=n % 2 == 1, prefix_hit_tokens=8, queue_s=0.01)) as srv:
        result = run_load_sync(config(srv.url, n=4, out=5, max_concurrency=1, warmup_requests=2))
    m = result.server_metrics
    # warm-up requests (arrivals 0 and 1) happen before the first scrape
    assert m.prefix == "kvserve:"
    assert m.preemptions == 2  # arrivals 3 and 5
    assert (m.prefix_cache_queries, m.prefix_cache_hits) == (64, 32) and m.prefix_cache_hit_rate == 0.5
    assert m.mean_queue_time_s == pytest.approx(0.01)
    assert (m.prompt_tokens, m.generation_tokens) == (64, 20)
    assert m.requests_succeeded == 4 and m.requests_by_finished_reason == {"length": 4, "stop": 0}


def test_counters_that_move_just_after_the_stream_ends_are_waited_for(fake_server):
    with fake_server(lambda n, body: dict(count_after_s=0.15)) as srv:
        result = run_load_sync(config(srv.url, n=3, out=2))
    assert result.server_metrics.requests_succeeded == 3 and result.server_metrics.generation_tokens == 6


def test_a_server_without_metrics_gives_none(fake_server):
    with fake_server(metrics=False) as srv:
        result = run_load_sync(config(srv.url, n=1))
    assert result.server_metrics is None and result.stats.completed == 1


def test_run_load_is_awaitable_inside_a_running_loop(fake_server):
    with fake_server() as srv:
        result = asyncio.run(run_load(config(srv.url, n=2)))
    assert result.stats.completed == 2 and not math.isnan(result.stats.duration_s)


def test_changing_the_load_shape_keeps_the_prompts(fake_server):
    with fake_server() as srv:
        a = run_load_sync(config(srv.url, n=3, request_rate=100.0))
        first = [r["prompt"] for r in srv.requests]
        b = run_load_sync(config(srv.url, n=3, max_concurrency=1))
        second = [r["prompt"] for r in srv.requests[3:]]
    assert sorted(first) == sorted(second)
    assert a.stats.completed == b.stats.completed == 3
