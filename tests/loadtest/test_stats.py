"""Percentiles, TPOT, throughputs and goodput against hand-computed values."""

import pytest

from loadtest.config import Slo
from loadtest.records import RequestRecord
from loadtest.stats import aggregate, meets_slos, summarize


def ok(i, ttft, e2el, out, prompt=10, itl=()):
    return RequestRecord(index=i, scheduled_s=0.0, sent_s=0.0, max_tokens=out, prompt_len=prompt, ok=True,
                         status_code=200, ttft_s=ttft, e2el_s=e2el, itl_s=tuple(itl), prompt_tokens=prompt,
                         output_tokens=out, output_tokens_source="usage")


def failed(i, key, status=None):
    return RequestRecord(index=i, scheduled_s=0.0, sent_s=0.0, max_tokens=4, prompt_len=10, ok=False,
                         status_code=status, failure=key, error="x")


def test_percentiles_interpolate_linearly_between_ranks():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.median) == (2.5, 2.5)
    # rank = q/100 * (n-1): p90 -> 2.7 -> 3 + 0.7*(4-3)
    assert s.p90 == pytest.approx(3.7) and s.p95 == pytest.approx(3.85) and s.p99 == pytest.approx(3.97)


def test_percentiles_of_one_value_and_of_none():
    assert summarize([5.0]).to_dict() == {"mean": 5.0, "median": 5.0, "p90": 5.0, "p95": 5.0, "p99": 5.0}
    assert summarize([]).to_dict() == {"mean": None, "median": None, "p90": None, "p95": None, "p99": None}


def test_tpot_is_the_decode_time_over_the_tokens_after_the_first():
    assert ok(0, ttft=0.2, e2el=0.6, out=5).tpot_s == pytest.approx(0.1)  # (0.6 - 0.2) / 4
    assert ok(0, ttft=0.2, e2el=0.2, out=1).tpot_s is None
    assert failed(0, "500").tpot_s is None


def test_aggregate_by_hand():
    records = [
        ok(0, 0.100, 0.500, 5, prompt=10, itl=(0.1, 0.1, 0.1, 0.1)),  # tpot 0.1
        ok(1, 0.300, 0.500, 3, prompt=20, itl=(0.1, 0.1)),  # tpot 0.1
        ok(2, 0.200, 0.200, 1, prompt=30),  # no tpot
        failed(3, "429", 429),
        failed(4, "ConnectError"),
        failed(5, "429", 429),
    ]
    a = aggregate(records, duration_s=2.0)
    assert (a.completed, a.failed) == (3, 3)
    assert a.failed_by == {"429": 2, "ConnectError": 1}
    assert a.total_output_tokens == 9 and a.total_input_tokens == 60
    assert a.request_throughput == 1.5
    assert a.output_throughput == 4.5
    assert a.total_token_throughput == 34.5
    assert a.ttft_ms.mean == pytest.approx(200.0) and a.ttft_ms.median == pytest.approx(200.0)
    assert a.tpot_ms.mean == pytest.approx(100.0)
    assert a.itl_ms.mean == pytest.approx(100.0)
    assert a.e2el_ms.median == pytest.approx(500.0)
    assert a.goodput is None and a.good_requests is None


def test_send_lag_is_actual_minus_planned_send_time_for_every_request():
    late = [RequestRecord(index=i, scheduled_s=0.1 * i, sent_s=0.1 * i + lag, max_tokens=1, prompt_len=1, ok=i < 2,
                          failure=None if i < 2 else "500", ttft_s=0.1, e2el_s=0.1, output_tokens=1)
            for i, lag in enumerate((0.0, 0.002, 0.004))]
    assert aggregate(late, 1.0).send_lag_ms.mean == pytest.approx(2.0)


def test_goodput_counts_requests_meeting_every_slo_per_second():
    records = [
        ok(0, 0.100, 0.500, 5),  # ttft 100, tpot 100 -> meets ttft:150, misses tpot:50
        ok(1, 0.100, 0.140, 5),  # ttft 100, tpot 10  -> meets both
        ok(2, 0.200, 0.240, 5),  # ttft 200 -> misses ttft
        ok(3, 0.120, 0.120, 1),  # one token: no tpot, ttft ok -> meets both
        failed(4, "500", 500),  # a failure never counts
    ]
    a = aggregate(records, 4.0, (Slo("ttft", 150), Slo("tpot", 50)))
    assert a.good_requests == 2 and a.goodput == 0.5
    b = aggregate(records, 4.0, (Slo("ttft", 150),))
    assert b.good_requests == 3 and b.goodput == 0.75
    c = aggregate(records, 4.0, (Slo("e2el", 200),))
    assert c.good_requests == 2  # requests 1 (140 ms) and 3 (120 ms)


def test_an_slo_limit_is_inclusive():
    assert meets_slos(ok(0, 0.5, 0.5, 1), [Slo("ttft", 500)])
    assert not meets_slos(ok(0, 0.5005, 0.5005, 1), [Slo("ttft", 500)])


def test_slo_spelling():
    assert Slo.parse("ttft:500") == Slo("ttft", 500.0)
    assert Slo.parse("E2EL:1.5") == Slo("e2el", 1.5)
    for bad in ("ttft", "itl:5", "ttft:x", "tpot:0", "tpot:-1"):
        with pytest.raises(ValueError, match="^goodput:"):
            Slo.parse(bad)


def test_a_run_without_completions_has_empty_latencies_and_zero_throughput():
    a = aggregate([failed(0, "500", 500)], 1.0, (Slo("ttft", 100),))
    assert a.completed == 0 and a.request_throughput == 0.0 and a.goodput == 0.0
    assert a.ttft_ms.mean is None and a.itl_ms.p99 is None
