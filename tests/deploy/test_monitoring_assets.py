"""deploy/: the Grafana dashboard, the Prometheus config and the compose stack, read statically.

The dashboard's metric names are checked against the exposition of the server's own `ServerMetrics`;
tests/deploy/test_prometheus_integration.py runs every expression against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
PANELS = DASHBOARD["panels"]
EXPRS = [t["expr"] for p in PANELS for t in p["targets"]]
SELECTOR = '{model_name=~"$model_name", instance=~"$instance"}'
METRIC = re.compile(r"kvserve:[A-Za-z0-9_:]+")
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def seconds(duration: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()
    return int(value) * (60 if unit == "m" else 1)


# ---- the dashboard --------------------------------------------------------------------------------------------

def test_dashboard_has_the_datasource_model_and_replica_variables():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert list(variables) == ["datasource", "model_name", "instance"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("model_name", "instance"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert v["definition"].startswith("label_values(kvserve:num_requests_running")
        assert v["definition"].endswith(f", {name})")


def test_every_panel_and_query_uses_the_datasource_variable():
    ds = {"type": "prometheus", "uid": "${datasource}"}
    assert all(p["datasource"] == ds for p in PANELS)
    assert all(t["datasource"] == ds for p in PANELS for t in p["targets"])


def test_panels_have_unique_ids_and_do_not_overlap():
    assert len({p["id"] for p in PANELS}) == len(PANELS)
    cells = set()
    for p in PANELS:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, f"{p['title']} overlaps another panel"
        cells |= cell


def test_every_series_is_filtered_by_model_and_replica():
    for expr in EXPRS:
        for m in METRIC.finditer(expr):
            assert expr[m.end():].startswith(SELECTOR), f"{m.group()} in {expr}"


def test_quantiles_aggregate_bucket_rates_by_le():
    quantiles = [e for e in EXPRS if e.startswith("histogram_quantile(")]
    assert len(quantiles) == 5 * 3 + 4
    for e in quantiles:
        assert re.fullmatch(r"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(kvserve:\w+_seconds_bucket"
                            + re.escape(SELECTOR) + r"\[1m\]\)\)\)", e), e


def exported_sample_names() -> set[str]:
    server_metrics = pytest.importorskip("server.metrics", reason="the server is not merged yet")
    from prometheus_client.parser import text_string_to_metric_families

    text = server_metrics.ServerMetrics("m", max_model_len=2048).render().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_dashboard_uses_only_series_the_server_exports():
    exported = exported_sample_names()
    used = {m.group() for e in EXPRS for m in METRIC.finditer(e)}
    assert used - exported == set()


def test_dashboard_covers_the_serving_metrics():
    used = {m.group() for e in EXPRS for m in METRIC.finditer(e)}
    for histogram in ("time_to_first_token", "time_per_output_token", "inter_token_latency", "e2e_request_latency",
                      "request_queue_time"):
        assert f"kvserve:{histogram}_seconds_bucket" in used
    for series in ("generation_tokens_total", "prompt_tokens_total", "num_requests_running", "num_requests_waiting",
                   "kv_cache_usage_perc", "num_preemptions_total", "prefix_cache_hits_total",
                   "prefix_cache_queries_total", "request_success_total"):
        assert f"kvserve:{series}" in used
    assert any(e.startswith("sum by (finished_reason) (rate(kvserve:request_success_total") for e in EXPRS)
    hit_rate = [e for e in EXPRS if "prefix_cache_hits_total" in e]
    assert hit_rate == [f"sum(rate(kvserve:prefix_cache_hits_total{SELECTOR}[1m])) / "
                        f"sum(rate(kvserve:prefix_cache_queries_total{SELECTOR}[1m]))"]


def test_dashboard_shows_utilization_and_the_roofline_by_step_kind_and_phase():
    used = {m.group() for e in EXPRS for m in METRIC.finditer(e)}
    for series in ("engine_step_flops_total", "engine_step_bytes_total", "engine_step_seconds_total", "model_flops_total",
                   "model_bytes_total", "peak_flops_per_second", "peak_memory_bandwidth_bytes_per_second"):
        assert f"kvserve:{series}" in used
    mfu = [e for e in EXPRS if "peak_flops_per_second" in e and "engine_step_flops_total" in e]
    assert mfu == [f"sum by (kind) (rate(kvserve:engine_step_flops_total{SELECTOR}[1m])) / sum by (kind) "
                   f"(rate(kvserve:engine_step_seconds_total{SELECTOR}[1m]) > 0) / "
                   f"scalar(max(kvserve:peak_flops_per_second{SELECTOR}))"]


# ---- Prometheus ---------------------------------------------------------------------------------------------

def test_prometheus_scrapes_the_compose_service():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert (job["job_name"], job["metrics_path"]) == ("kvserve", "/metrics")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["kvserve:8000"]
    assert "kvserve" in COMPOSE["services"]
    # the dashboard's rate(...[1m]) windows need a few samples
    assert 60 / seconds(config["global"]["scrape_interval"]) >= 4


def test_promtool_accepts_the_prometheus_config():
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    r = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


# ---- docker compose and Grafana provisioning ----------------------------------------------------------------

def test_compose_gives_kvserve_a_gpu_a_cache_volume_and_time_to_drain():
    kvserve = COMPOSE["services"]["kvserve"]
    (device,) = kvserve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "kvserve-cache:/var/cache/kvserve" in kvserve["volumes"]
    assert "KVSERVE_CACHE=/var/cache/kvserve" in (REPO / "Dockerfile").read_text()
    assert kvserve["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert seconds(kvserve["stop_grace_period"]) > 30  # the server's default --shutdown-timeout


def test_compose_pins_third_party_images_and_binds_ports_to_loopback():
    for name, service in COMPOSE["services"].items():
        if name != "kvserve":
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), service["image"]
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), port


def test_compose_bind_mounts_exist_and_match_the_grafana_provisioning():
    mounts = {}
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
                mounts[source] = target
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in COMPOSE["services"]["prometheus"]["command"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/kvserve.yml").read_text())["providers"][0]
    assert Path(mounts["./grafana-dashboard.json"]).parent == Path(provider["options"]["path"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert (ds["type"], ds["url"], ds["isDefault"]) == ("prometheus", "http://prometheus:9090", True)
