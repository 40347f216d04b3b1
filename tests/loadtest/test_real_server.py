"""The load tester against a real `kvserve serve` on loopback: every request is accounted for, percentiles
are ordered, TPOT follows from the records, and the server's /metrics deltas equal the client's counts."""

from __future__ import annotations

import math

import pytest

from engine.models.tiny import save_tiny_llama
from loadtest.config import LengthSpec, LoadConfig, LoadShape, Target, WorkloadConfig
from loadtest.runner import run_load_sync
from server.process import ServerProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny")
    with ServerProcess("--model", str(model), "--num-kv-blocks", "512", "--max-num-seqs", "8", threads=1) as proc:
        yield proc.start()


def test_load_run_against_kvserve_accounts_for_every_request(server):
    n = 24
    config = LoadConfig(
        target=Target(server.url),
        workload=WorkloadConfig(num_requests=n, input_len=LengthSpec.uniform(8, 64), output_len=LengthSpec.uniform(4, 24)),
        shape=LoadShape(request_rate=50.0, max_concurrency=12, warmup_requests=2),
        seed=3,
    )
    result = run_load_sync(config)
    s = result.stats
    assert s.completed == n and s.failed == 0
    assert len(result.records) == n and all(r.ok for r in result.records)
    for summary in (s.ttft_ms, s.tpot_ms, s.itl_ms, s.e2el_ms):
        assert summary.median <= summary.p90 <= summary.p99
    # TPOT of each request = (E2EL - TTFT) / (output tokens - 1), output tokens from the server's usage
    for r in result.records:
        assert r.output_tokens_source == "usage"
        assert r.output_tokens == r.max_tokens  # ignore_eos: exactly what was asked
        if r.output_tokens >= 2:
            assert math.isclose(r.tpot_s, (r.e2el_s - r.ttft_s) / (r.output_tokens - 1))
    tpots = sorted(r.tpot_s * 1000 for r in result.records if r.tpot_s is not None)
    assert math.isclose(s.tpot_ms.mean, sum(tpots) / len(tpots), rel_tol=1e-9)
    # the server saw exactly what the client sent (warm-up requests are excluded from both sides)
    m = result.server_metrics
    assert m is not None and m.prefix == "kvserve:"
    assert m.requests_succeeded == n
    assert m.generation_tokens == s.total_output_tokens == sum(r.max_tokens for r in result.records)
    assert m.prompt_tokens == s.total_input_tokens == sum(r.prompt_len for r in result.records)
    assert m.requests_by_finished_reason == {"length": n, "stop": 0, "abort": 0}
