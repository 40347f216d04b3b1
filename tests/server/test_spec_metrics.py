"""A server with speculative decoding (`speculative_config`, as `kvserve serve --speculative-method ngram`
builds it): completions are unchanged, /metrics counts drafts and accepted tokens under vLLM's names, and the
load tester's /metrics delta turns them into an acceptance rate and a mean accepted length."""

from __future__ import annotations

import pytest

from loadtest.metrics_scrape import MetricsSnapshot, metrics_delta
from tests.engine.spec_helpers import save_loopy_model

pytestmark = pytest.mark.timeout(180)

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1}
LABEL = (("model_name", "m"),)


def completion(live, prompt):
    with live.client() as c:
        before = c.get("/metrics").text
        r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 24, "ignore_eos": True,
                                            "temperature": 0})
        assert r.status_code == 200
        return r.json()["choices"][0]["text"], before, c.get("/metrics").text


def test_speculation_counts_drafts_and_leaves_the_text_unchanged(live_server, tmp_path):
    LiveServer, factory = live_server
    model = save_loopy_model(tmp_path / "loopy", layer_scale=0.02, with_tokenizer=True)
    prompt = list(range(300, 310)) * 3
    texts, deltas = [], []
    for spec in (None, NGRAM):
        live = LiveServer(factory(model, speculative_config=spec), api_key=None)
        live.start()
        try:
            text, before, after = completion(live, prompt)
        finally:
            live.stop()
        texts.append(text)
        deltas.append(metrics_delta(MetricsSnapshot.parse(before), MetricsSnapshot.parse(after)))
    assert texts[0] == texts[1]
    plain, spec = deltas
    assert plain.spec_decode_num_drafts == 0 and plain.spec_acceptance_rate is None
    assert spec.spec_decode_num_drafts > 0
    assert 0 < spec.spec_decode_num_accepted_tokens <= spec.spec_decode_num_draft_tokens
    assert spec.spec_acceptance_rate == spec.spec_decode_num_accepted_tokens / spec.spec_decode_num_draft_tokens
    assert spec.spec_mean_accepted_length == 1 + spec.spec_decode_num_accepted_tokens / spec.spec_decode_num_drafts
    per_pos = {k[1]: v for k, v in MetricsSnapshot.parse(after).samples.items()
               if k[0] == "kvserve:spec_decode_num_accepted_tokens_per_pos_total"}
    assert sum(per_pos.values()) == spec.spec_decode_num_accepted_tokens  # one server's whole life
