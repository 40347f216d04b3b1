"""deploy/prometheus-ray.yml: the scrape job for replicas on Ray Serve, read statically and by promtool.
(A real Prometheus runs this discovery against a live deployment in tests/ray/ray_cases.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CONFIG_PATH = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-ray.yml"
CONFIG = yaml.safe_load(CONFIG_PATH.read_text())


def test_the_job_discovers_replicas_at_the_proxys_targets_route_and_scrapes_their_metrics():
    (job,) = CONFIG["scrape_configs"]
    assert job["job_name"] == "kvserve" and job["metrics_path"] == "/metrics"
    (sd,) = job["http_sd_configs"]
    assert sd["url"].endswith("/metrics/targets")
    assert "static_configs" not in job  # the replicas come and go; discovery finds them


def test_the_scrape_interval_leaves_the_dashboards_one_minute_rates_enough_samples():
    assert int(CONFIG["global"]["scrape_interval"].rstrip("s")) <= 15


def test_promtool_accepts_it():
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    r = subprocess.run(["promtool", "check", "config", str(CONFIG_PATH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
