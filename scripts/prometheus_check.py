"""The monitoring assets against a real Prometheus scraping a real kvserve, all on loopback.

    python scripts/prometheus_check.py          # needs the `prometheus` and `promtool` binaries (Debian: prometheus)

1. `promtool check config deploy/prometheus.yml`.
2. `kvserve serve` (the default model on the CPU, an API key, a free loopback port) as a subprocess.
3. Prometheus scraping it every second with the key from a credentials file, as deploy/prometheus.yml documents;
   config and TSDB in a temporary directory, web API on a free loopback port.
4. Once Prometheus has scraped zero requests, a few completions (two share a prefix of several KV blocks, so
   the prefix cache hits); then wait until Prometheus has scraped all of them.
5. Queries: every expression of deploy/grafana-dashboard.json returns at least one finite sample, and its TTFT
   p50 expression, over a window that holds the whole run, equals the quantile computed here from kvserve's own
   /metrics buckets with Prometheus' interpolation rule.

Every process runs in its own session and is killed (SIGTERM, then SIGKILL) on the way out; every wait has a
deadline. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # check_processes, also when loaded by path
from check_processes import CheckFailed, start, stop, tail, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
PROMETHEUS_YML = REPO / "deploy" / "prometheus.yml"
API_KEY = "prometheus-check-key"
SHARED_PREFIX = "The history of the printing press begins in the fifteenth century, when movable type " * 4


@dataclass
class Result:
    num_requests: int
    ttft_p50_prometheus: float
    ttft_p50_from_buckets: float
    prefix_cache_hits: float
    expressions: dict[str, list[float]] = field(default_factory=dict)  # dashboard expression -> sample values
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, **kwargs) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.HTTPError:
        return None


# ---- kvserve and Prometheus -----------------------------------------------------------------------------

def start_kvserve(tmp: Path, stack: ExitStack, timeout_s: float) -> str:
    log = tmp / "kvserve.log"
    env = dict(os.environ, KVSERVE_API_KEY=API_KEY)
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
           "--max-model-len", "512", "--num-kv-blocks", "128", "--no-access-log",
           "--peak-flops", "0.1", "--peak-bandwidth", "0.01"]  # a declared peak: the utilization panels have values
    proc = start(cmd, log, stack, cwd=REPO, env=env)

    def bound_url():
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        return m.group(1) if m else None

    url = wait_for("kvserve binds its port", bound_url, 60, proc, log)
    wait_for("kvserve /health turns 200", lambda: (r := get(url + "/health")) is not None and r.status_code == 200,
             timeout_s, proc, log)
    return url


def start_prometheus(tmp: Path, target: str, stack: ExitStack, timeout_s: float) -> str:
    (tmp / "api-key").write_text(API_KEY)
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "kvserve", "metrics_path": "/metrics",
            "authorization": {"credentials_file": str(tmp / "api-key")},
            "static_configs": [{"targets": [target]}],
        }],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config, indent=2))
    for attempt in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        log = tmp / f"prometheus-{attempt}.log"
        proc = start(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp / f'tsdb-{attempt}'}", f"--web.listen-address=127.0.0.1:{port}"],
                     log, stack)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for("Prometheus is ready", lambda: (r := get(url + "/-/ready")) is not None and r.status_code == 200,
                     timeout_s, proc, log)
            return url
        except CheckFailed:
            if proc.poll() is None or "address already in use" not in log.read_text(errors="replace"):
                raise
    raise CheckFailed("Prometheus: no free port after 3 attempts")


def instant(prom: str, expr: str) -> list[tuple[dict, float]]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        raise CheckFailed(f"query {expr!r}: HTTP {r.status_code}: {body.get('error', body)}")
    if body["data"]["resultType"] != "vector":
        raise CheckFailed(f"query {expr!r}: expected an instant vector, got {body['data']['resultType']}")
    return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]


def scalar(prom: str, expr: str) -> float | None:
    result = instant(prom, expr)
    return result[0][1] if len(result) == 1 else None


# ---- the expected numbers ---------------------------------------------------------------------------------

def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs: linear interpolation inside
    the bucket holding rank q * total; the lowest bucket starts at 0; the +Inf bucket answers the highest
    finite bound."""
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    b = next(i for i, (_, count) in enumerate(buckets) if count >= rank or i == len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, below = (buckets[b - 1] if b > 0 else (0.0, 0.0))
    end, count = buckets[b]
    return start + (end - start) * (rank - below) / (count - below)


def scraped_buckets(metrics_text: str, name: str) -> list[tuple[float, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(float(s.labels["le"]), s.value) for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == name + "_bucket"]


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    dashboard = json.loads(path.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """A dashboard expression with its template variables set to "All"."""
    return expr.replace("$model_name", ".*").replace("$instance", ".*")


# ---- the check --------------------------------------------------------------------------------------------

def send_requests(url: str) -> int:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    distinct = [{"prompt": p, "max_tokens": 6} for p in
                ("The capital of France is", "def fibonacci(n):", "Once upon a time", "The three primary colors are")]
    shared = [{"prompt": SHARED_PREFIX + s, "max_tokens": 4} for s in ("First,", "Second,")]

    def post(body: dict) -> None:
        body = dict(body, temperature=0, ignore_eos=True)
        r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=120)
        if r.status_code != 200:
            raise CheckFailed(f"POST /v1/completions: HTTP {r.status_code}: {r.text[:300]}")

    with ThreadPoolExecutor(len(distinct)) as pool:
        list(pool.map(post, distinct))
    for body in shared:  # one after the other: the second finds the first one's prefix blocks
        post(body)
    return len(distinct) + len(shared)


def run_check(tmp: Path, start_timeout_s: float = 240) -> Result:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise CheckFailed(f"{tool}: not found (Debian/Ubuntu: apt-get install prometheus)")
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    check = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True,
                           timeout=60)
    if check.returncode != 0:
        raise CheckFailed(f"promtool check config {PROMETHEUS_YML.name}:\n{check.stdout}{check.stderr}")

    with ExitStack() as stack:
        t = time.monotonic()
        kvserve = start_kvserve(tmp, stack, start_timeout_s)
        seconds["kvserve start"] = time.monotonic() - t
        t = time.monotonic()
        prom = start_prometheus(tmp, kvserve.removeprefix("http://"), stack, 60)
        wait_for("Prometheus scrapes kvserve with zero requests",
                 lambda: scalar(prom, "kvserve:time_to_first_token_seconds_count") == 0, 60)
        seconds["prometheus start + first scrape"] = time.monotonic() - t

        t = time.monotonic()
        n = send_requests(kvserve)
        seconds["requests"] = time.monotonic() - t
        t = time.monotonic()
        wait_for(f"Prometheus scrapes all {n} finished requests",
                 lambda: scalar(prom, "sum(kvserve:request_success_total)") == n
                 and scalar(prom, "kvserve:time_to_first_token_seconds_count") == n, 60)
        seconds["scrape after requests"] = time.monotonic() - t

        raw = httpx.get(kvserve + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).text
        expected = bucket_quantile(0.5, scraped_buckets(raw, "kvserve:time_to_first_token_seconds"))
        # A window that holds the zero scrape (the run takes well under 5 minutes): rate() then scales every
        # bucket by the same factor, and the quantile is exactly that of the raw counts.
        ttft_p50 = next(e for e in dashboard_expressions()
                        if e.startswith("histogram_quantile(0.5,") and "time_to_first_token_seconds" in e)
        got = scalar(prom, concrete(ttft_p50).replace("[1m]", "[5m]"))
        if got is None or not math.isfinite(got):
            raise CheckFailed(f"dashboard TTFT p50: expected a finite number, got {got}")
        if not math.isclose(got, expected, rel_tol=1e-6):
            raise CheckFailed(f"dashboard TTFT p50 = {got}, but kvserve's own buckets give {expected}")
        hits = scalar(prom, "kvserve:prefix_cache_hits_total")

        expressions = {}
        for expr in dashboard_expressions():
            values = [v for _, v in instant(prom, concrete(expr))]
            if not values or not all(math.isfinite(v) for v in values):
                raise CheckFailed(f"dashboard expression {expr!r}: expected finite samples, got {values}")
            expressions[expr] = values
    seconds["total"] = time.monotonic() - t0
    return Result(n, got, expected, hits, expressions, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, TSDB)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kvserve-prometheus-check-"))
    try:
        result = run_check(tmp)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"logs and TSDB kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"promtool check config {PROMETHEUS_YML.relative_to(REPO)}: ok")
    print(f"{result.num_requests} requests scraped; TTFT p50 (dashboard expression) = "
          f"{result.ttft_p50_prometheus:.4f} s, from kvserve's buckets = {result.ttft_p50_from_buckets:.4f} s; "
          f"prefix-cache hits = {result.prefix_cache_hits:g} tokens")
    print(f"all {len(result.expressions)} dashboard expressions returned finite samples:")
    for expr, values in result.expressions.items():
        print(f"  {', '.join(f'{v:.4g}' for v in values):<28} {expr}")
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
