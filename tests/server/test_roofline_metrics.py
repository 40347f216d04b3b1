"""/metrics exports each step's model FLOPs and bytes exactly as computed by hand for a known request, and
utilization against the declared peak. A server of its own (a declared peak, nothing else counted)."""

from __future__ import annotations

import math

import pytest

from engine.tools.peaks import PeakArgs

pytestmark = pytest.mark.timeout(120)

# The tiny llama of tests/server/conftest.py: vocab 49,152, hidden 64, MLP 128, 2 layers, 4 heads, 2 KV heads,
# head_dim 16, the lm_head tied to the embedding, fp32.
DENSE = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64) + 2 * 3 * 64 * 128 + (2 * 2 * 64 + 64)
WEIGHT_BYTES = (DENSE + 49152 * 64) * 4
KV_TOKEN = 2 * 2 * 2 * 16 * 4
ATTN_PAIR = 4 * 2 * 4 * 16
LOGITS = 2 * 49152 * 64
LABEL = (("model_name", "tiny-llama"),)
PROMPT = list(range(100, 110))  # 10 token ids: less than one KV block, so no prefix-cache hit


@pytest.fixture(scope="module")
def metrics_text(live_server, tiny_llama_dir, parse_metrics):
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir), api_key=None)
    live.ctx.peak_args = PeakArgs(flops_tflops=1.0, bandwidth_tbs=0.1)
    live.start()
    try:
        with live.client() as c:
            r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "ignore_eos": True, "temperature": 0})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
            return parse_metrics(c.get("/metrics").text)
    finally:
        live.stop()


def value(metrics, name, **labels):
    return metrics[(name, tuple(sorted(dict(LABEL, **labels).items())))]


def test_the_test_models_numbers_by_hand():
    assert (DENSE, WEIGHT_BYTES, KV_TOKEN) == (74_048, 12_879_104, 512)


def test_one_prefill_step_and_two_decode_steps_are_counted_by_hand(metrics_text):
    # step 1: the 10-token prompt (55 causal pairs), sampling one row; steps 2 and 3: decodes at contexts 11 and 12
    assert value(metrics_text, "kvserve:model_flops_total", phase="prefill") == 2 * DENSE * 10 + ATTN_PAIR * 55 + LOGITS
    assert value(metrics_text, "kvserve:model_flops_total", phase="decode") == 2 * (2 * DENSE + LOGITS) + ATTN_PAIR * (11 + 12)
    assert value(metrics_text, "kvserve:model_bytes_total", phase="prefill") == WEIGHT_BYTES + 10 * KV_TOKEN
    assert value(metrics_text, "kvserve:model_bytes_total", phase="decode") == 2 * WEIGHT_BYTES + (10 + 11) * KV_TOKEN + 2 * KV_TOKEN
    steps = {kind: value(metrics_text, "kvserve:engine_steps_total", kind=kind) for kind in ("prefill", "decode", "mixed")}
    assert steps == {"prefill": 1, "decode": 2, "mixed": 0}
    for phase in ("prefill", "decode"):  # without mixed steps, phase of the work = kind of the step
        assert value(metrics_text, "kvserve:engine_step_flops_total", kind=phase) == \
            value(metrics_text, "kvserve:model_flops_total", phase=phase)
    assert value(metrics_text, "kvserve:engine_step_seconds_total", kind="decode") > 0


def test_the_last_steps_roofline_position_and_utilization(metrics_text):
    last_flops = 2 * DENSE + ATTN_PAIR * 12 + LOGITS
    last_bytes = WEIGHT_BYTES + 12 * KV_TOKEN
    assert value(metrics_text, "kvserve:step_arithmetic_intensity") == pytest.approx(last_flops / last_bytes)
    assert value(metrics_text, "kvserve:peak_flops_per_second") == 1e12
    assert value(metrics_text, "kvserve:peak_memory_bandwidth_bytes_per_second") == 1e11
    mfu = value(metrics_text, "kvserve:model_flops_utilization")
    mbu = value(metrics_text, "kvserve:memory_bandwidth_utilization")
    assert 0 < mfu < 1 and 0 < mbu < 1
    # both come from the same step time: their ratio is the step's intensity over the peak's ridge
    assert (mfu / mbu) == pytest.approx((last_flops / last_bytes) / (1e12 / 1e11))


def test_without_a_peak_utilization_is_not_a_number_but_flops_are_counted():
    from server.metrics import ServerMetrics
    from server.stat_logger import StatLogger
    from engine.outputs import IterationStats, StepOutput
    from engine.roofline import ModelCost, Share, step_cost

    m = ServerMetrics("m", max_model_len=64)
    cost = step_cost(ModelCost(2, 4, 8, 32, 100, 1000, 4000, 64), [Share(3, 1, True, True)])
    stats = IterationStats(1, 0, 1, 8, 1, 0, 1, 0, 0, 0, step_time_s=0.01, cost=cost)
    StatLogger(m).record(StepOutput([], stats))
    text = m.render().decode()
    assert 'kvserve:model_flops_utilization{model_name="m"} NaN' in text
    assert 'kvserve:peak_flops_per_second{model_name="m"} NaN' in text
    assert f'kvserve:model_flops_total{{model_name="m",phase="decode"}} {cost.flops}' in text
    assert not math.isnan(m.arithmetic_intensity._value.get())
