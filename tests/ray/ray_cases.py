"""`kvserve serve --replicas 2` on a local Ray instance: two CPU replicas of the default model behind Serve's proxy.

These cases run only inside a private network namespace (127.0.0.1 is the only address there), started by
tests/ray/test_ray_serve.py through scripts/netns_run.py; anywhere else they skip. One deployment serves the
whole module, with an API key, so the key is checked on the proxy path and on the replicas' metrics ports.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest.config import LoadConfig, LoadShape, Target, WorkloadConfig
from loadtest.lengths import LengthSpec
from loadtest.metrics_scrape import MetricsSnapshot
from loadtest.runner import run_load_sync
from server.process import ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

pytestmark = pytest.mark.skipif(os.environ.get("KVSERVE_IN_NETNS") != "1",
                                reason="runs inside a private network namespace (tests/ray/test_ray_serve.py)")

API_KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "SmolLM2-135M-Instruct"
LONG = 160  # tokens: long enough that a stream is still running when its replica is killed


@pytest.fixture(scope="module")
def serve():
    from engine.models.resolve import resolve_model

    resolve_model(None)  # convert the default model once here, not in both replicas at the same time
    # --prefix-imbalance-threshold 1: route by load as soon as one replica holds 2 more requests than the
    # other, so the killed-replica case gets streams on both replicas whatever the earlier cases left in the
    # router's prefix tree.
    proc = ServerProcess("--replicas", "2", "--api-key", API_KEY, "--cpu-kv-cache-gb", "0.25",
                         "--shutdown-timeout", "5", "--max-model-len", "1024", "--prefix-imbalance-threshold", "1",
                         "--peak-flops", "0.1", "--peak-bandwidth", "0.01")  # a declared peak: the utilization panels have values
    try:
        proc.start(timeout=600)
        yield proc
    finally:
        proc.stop(timeout=90)


def get(serve, path: str) -> httpx.Response:
    return httpx.get(serve.url + path, headers=AUTH, timeout=30)


def targets(serve) -> list[dict]:
    resp = get(serve, "/metrics/targets")
    assert resp.status_code == 200, resp.text
    return resp.json()


def openai_client(serve):
    import openai

    return openai.OpenAI(base_url=serve.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_a_short_loadtest_through_the_proxy_succeeds_and_counts_on_both_replicas(serve):
    config = LoadConfig(
        target=Target(base_url=serve.url, api_key=API_KEY, timeout_s=120),
        workload=WorkloadConfig(num_requests=12, input_len=LengthSpec.parse("8:24"), output_len=LengthSpec.parse("4:12"),
                                prefix_groups=4, prefix_len=48),
        shape=LoadShape(max_concurrency=4),
    )
    result = run_load_sync(config)
    assert result.stats.completed == 12 and result.stats.failed == 0, [r.error for r in result.records if not r.ok]
    # The load test's own /metrics scrape went through the proxy: the merged exposition of both replicas.
    assert result.server_metrics is not None and result.server_metrics.requests_succeeded == 12
    assert result.server_metrics.generation_tokens == sum(r.output_tokens for r in result.records)
    assert result.server_metrics.prefix_cache_hits > 0  # 12 requests over 4 shared 48-token prefixes


def test_the_openai_client_gets_completions_chats_and_streams_through_the_proxy(serve):
    client = openai_client(serve)
    whole = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert whole.choices[0].text and whole.usage.completion_tokens == 6
    pieces = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == whole.choices[0].text  # greedy: identical
    chat = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                               max_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chat[-1].usage.completion_tokens == 5
    assert any(c.choices and c.choices[0].delta.content for c in chat)


def test_the_single_servers_errors_come_through_unchanged(serve):
    resp = httpx.post(serve.url + "/v1/completions", headers=AUTH, timeout=30,
                      json={"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    assert httpx.get(serve.url + "/v1/models", timeout=30).status_code == 401  # no key
    assert httpx.get(serve.url + "/metrics/targets", timeout=30).status_code == 401


HOSTILE = [  # (what, method, path, body bytes, extra headers, status, param): checked at the ingress or a replica
    ("lone surrogate", "POST", "/v1/completions", b'{"prompt": "\\ud800"}', {}, 400, "prompt"),
    ("nested 100 deep", "POST", "/v1/completions", b'{"prompt": "hi", "x": ' + b"[" * 100 + b"]" * 100 + b"}", {},
     400, None),
    ("unknown field", "POST", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi"}], "nonsense": 1}', {}, 400, "nonsense"),
    ("not UTF-8", "POST", "/tokenize", b'{"prompt": "\xff\xfe"}', {}, 400, None),
    ("NaN", "POST", "/v1/completions", b'{"prompt": "hi", "temperature": NaN}', {}, 400, None),
    ("text/plain body", "POST", "/v1/completions", b'{"prompt": "hi"}', {"Content-Type": "text/plain"}, 415, None),
    ("wrong Basic key", "GET", "/dashboard", None, {"Authorization": "Basic dTp3cm9uZw=="}, 401, None),
    ("Basic not base64", "GET", "/metrics/targets", None, {"Authorization": "Basic !!"}, 401, None),
    ("POST on /metrics/targets", "POST", "/metrics/targets", b"{}", {}, None, None),
    ("unknown dashboard asset", "GET", "/dashboard/nope.js", None, {}, 404, None),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_requests_through_the_proxy_get_4xx_envelopes(serve, case):
    what, method, path, body, headers, status, param = case
    resp = httpx.request(method, serve.url + path, content=body, timeout=30,
                         headers={**AUTH, "Content-Type": "application/json", **headers})
    assert 400 <= resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    assert status is None or resp.status_code == status, (what, resp.status_code, resp.text[:300])
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert param is None or error["param"] == param, error
    if path == "/dashboard":
        assert resp.headers["www-authenticate"] == 'Basic realm="kvserve"'
    ok = httpx.post(serve.url + "/v1/completions", headers=AUTH, timeout=60,
                    json={"prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200


def test_prometheus_finds_every_replica_and_the_merged_metrics_add_up(serve):
    found = targets(serve)
    assert len(found) == 2 and len({t["labels"]["replica"] for t in found}) == 2
    per_replica = {}
    for group in found:
        (target,) = group["targets"]
        assert target.startswith("127.0.0.1:")
        resp = httpx.get(f"http://{target}/metrics", headers=AUTH, timeout=30)
        assert resp.status_code == 200
        per_replica[group["labels"]["replica"]] = MetricsSnapshot.parse(resp.text)
        assert httpx.get(f"http://{target}/metrics", timeout=30).status_code == 401  # the key holds there too
    merged = MetricsSnapshot.parse(get(serve, "/metrics").text)
    assert set(merged.by_label("kvserve:prompt_tokens_total", "replica")) == set(per_replica)
    for replica, snapshot in per_replica.items():
        # counters only grow: the merged scrape came later, and nothing else ran in between
        assert merged.by_label("kvserve:prompt_tokens_total", "replica")[replica] == \
            snapshot.total("kvserve:prompt_tokens_total")


def test_a_real_prometheus_discovers_both_replicas_and_every_dashboard_query_answers(serve, tmp_path):
    """deploy/prometheus-ray.yml's HTTP service discovery, pointed at this deployment, with a 1 s interval."""
    import shutil

    import yaml

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    from contextlib import ExitStack

    import prometheus_check as pc

    (tmp_path / "key").write_text(API_KEY)
    config = yaml.safe_load((pc.REPO / "deploy" / "prometheus-ray.yml").read_text())
    job = config["scrape_configs"][0]
    auth = {"type": "Bearer", "credentials_file": str(tmp_path / "key")}  # Prometheus 2.42's discovery needs the type
    job["authorization"] = auth
    job["http_sd_configs"] = [{"url": serve.url + "/metrics/targets", "refresh_interval": "1s", "authorization": auth}]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with ExitStack() as stack:
        port = pc.free_port()
        log = tmp_path / "prometheus.log"
        proc = pc.start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                        log, stack)
        prom = f"http://127.0.0.1:{port}"
        pc.wait_for("both replicas scraped", lambda: pc.scalar(prom, 'count(up{job="kvserve"} == 1)') == 2
                    if pc.get(prom + "/-/ready") is not None else False, 120, proc, log, interval_s=1)
        replicas = {m["replica"] for m, _ in pc.instant(prom, "kvserve:num_requests_running")}
        assert replicas == {t["labels"]["replica"] for t in targets(serve)}
        client = openai_client(serve)
        for i in range(6):  # activity inside the dashboard's 1m rate windows, on both replicas
            client.completions.create(model=MODEL, prompt=[1000 + 37 * i + j for j in range(20)], max_tokens=4)
        finished = MetricsSnapshot.parse(get(serve, "/metrics").text).total("kvserve:request_success_total")
        pc.wait_for("the completions scraped", lambda: pc.scalar(
            prom, 'sum(kvserve:request_success_total{job="kvserve"})') == finished, 60, proc, log, interval_s=1)
        empty = [e for e in pc.dashboard_expressions()
                 if not any(v == v and abs(v) != float("inf") for _, v in pc.instant(prom, pc.concrete(e)))]
        assert not empty, f"dashboard queries without a finite sample: {empty}"


def test_a_client_that_leaves_mid_stream_aborts_its_request_in_the_replica(serve):
    with httpx.stream("POST", serve.url + "/v1/completions", headers=AUTH, timeout=60,
                      json={"model": MODEL, "prompt": "Count:", "max_tokens": 500, "ignore_eos": True,
                            "stream": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break  # one token arrived: leave
    deadline = time.monotonic() + 30
    while True:
        merged = MetricsSnapshot.parse(get(serve, "/metrics").text)
        if merged.total("kvserve:num_requests_running") == 0 and merged.total("kvserve:kv_cache_usage_perc") == 0:
            break
        assert time.monotonic() < deadline, "the abandoned request kept running"
        time.sleep(0.5)
    assert merged.by_label("kvserve:request_success_total", "finished_reason")["abort"] >= 1


def _open_stream(client, i: int):
    # Prompts share no prefix; with the replicas' loads apart the router falls back to power of two choices.
    prompt = [int(t) for t in np.random.default_rng(i).integers(1000, 20000, size=24)]
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=LONG, temperature=0, stream=True, extra_body={"ignore_eos": True})
    stream = raw.parse()
    first = next(iter(stream))  # the request is running on its replica
    return raw.headers["x-kvserve-replica"], stream, first


def _finish(stream) -> tuple[str, str | int]:
    import openai

    text, reason = "", None
    try:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                reason = chunk.choices[0].finish_reason or reason
    except openai.APIError as e:
        return "failed", str(e)
    return "completed", reason


def test_a_killed_replica_fails_only_its_requests_and_serve_replaces_it(serve):
    client = openai_client(serve)
    before = {t["labels"]["replica"]: int(t["labels"]["__meta_kvserve_pid"]) for t in targets(serve)}
    streams = []  # (replica, stream)
    for i in range(8):  # until both replicas hold a running stream (distinct prompts spread them)
        replica, stream, _ = _open_stream(client, i)
        streams.append((replica, stream))
        if len({r for r, _ in streams}) == 2 and len(streams) >= 3:
            break
    assert len({r for r, _ in streams}) == 2, "the router never used the second replica"
    victim = streams[0][0]
    os.kill(before[victim], signal.SIGKILL)  # the replica's process dies, as in an OOM kill

    with concurrent.futures.ThreadPoolExecutor(len(streams)) as pool:
        outcomes = list(pool.map(lambda rs: _finish(rs[1]), streams))
    for (replica, _), (status, detail) in zip(streams, outcomes):
        if replica == victim:
            assert status == "failed" and "replica" in detail and "retry" in detail, detail
        else:
            assert (status, detail) == ("completed", "length")

    # Meanwhile the survivor serves new requests, and Serve starts a replacement replica.
    again = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0)
    assert again.usage.completion_tokens == 3
    deadline = time.monotonic() + 300
    while True:
        now = {t["labels"]["replica"] for t in targets(serve)}
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement replica; replicas now: {now}"
        time.sleep(2)
    assert get(serve, "/health").status_code == 200
