"""The live dashboard in a real browser: headless Chromium against a real kvserve under load, all on loopback.

    python scripts/dashboard_check.py                                   # the check; exit status 0 when it passed
    python scripts/dashboard_check.py --showcase --screenshot docs/img/dashboard.png    # the README's picture

1. `kvserve serve` (the default model on the CPU, an API key, 256 KV blocks of 16 tokens) as a subprocess.
2. A warm-up request whose 64-token prompt leaves exactly 4 cached-free blocks behind when it finishes.
3. Load: three long streaming requests, two of them sharing a 32-token prefix (2 full blocks, held by both),
   started and running (each has its first token) before the browser opens the page.
4. Chromium (Debian's `chromium`) headless with a fresh profile and DevTools on a loopback port; over the
   DevTools protocol the page gets the API key as HTTP Basic credentials (as a person's browser would), opens
   /dashboard and is read once it has rendered twice: the legend's counts, the grid's cells by state and owner,
   the request rows, the roofline's dots. All values come from one render (JavaScript runs between renders).
5. Optionally a screenshot of the page (`--screenshot`); `--showcase` runs a richer load for it (more
   requests, a shared system prompt, a queue) and declares this CPU's measured peak so the roofline has a roof.

Every process runs in its own session and is stopped on the way out; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # check_processes, also when loaded by path
from check_processes import CheckFailed, start, stop, tail, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
API_KEY = "dashboard-check-key"
NUM_BLOCKS = 256
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
READ_DOM = """(() => {
  const t = (id) => document.getElementById(id).textContent;
  const cells = [...document.querySelectorAll('#pool .cell')];
  const by = (s) => cells.filter((c) => c.dataset.state === s).length;
  const rows = [...document.querySelectorAll('#requests tbody tr')].filter((r) => r.dataset.status);
  return {updates: +document.body.dataset.updates, phase: t('phase'),
    counts: {free: t('count-free'), cached: t('count-cached'), used: t('count-used'), shared: t('count-shared')},
    cells: {total: cells.length, f: by('f'), c: by('c'), u: by('u'), s: by('s'),
            owned: cells.filter((c) => +c.dataset.owner >= 0).length},
    running: t('running-count'), waiting: t('waiting-count'),
    rows: rows.map((r) => ({status: r.dataset.status, blocks: +r.querySelector('.blocks').textContent})),
    points: +document.getElementById('roofline').dataset.points};
})()"""


@dataclass
class Result:
    dom: dict  # what READ_DOM returned
    seconds: dict[str, float]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# ---- kvserve and its load ---------------------------------------------------------------------------------
def start_kvserve(tmp: Path, stack: ExitStack, extra: list[str], timeout_s: float) -> str:
    log = tmp / "kvserve.log"
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
           "--max-model-len", "1024", "--num-kv-blocks", str(NUM_BLOCKS), "--cpu-threads", "1", "--no-access-log",
           *extra]
    proc = start(cmd, log, stack, cwd=REPO, env=dict(os.environ, KVSERVE_API_KEY=API_KEY))
    url = wait_for("kvserve binds its port", lambda: (m := re.search(r"serving on (http://127\.0\.0\.1:\d+)",
                                                                     log.read_text(errors="replace"))) and m.group(1),
                   60, proc, log)

    def healthy():
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("kvserve /health turns 200", healthy, timeout_s, proc, log)
    return url


class Load:
    """Streaming completions in threads; `started` once each has its first token; closed on `stop()` (the server
    aborts them and frees their blocks)."""

    def __init__(self, url: str, bodies: list[dict]):
        self.url, self.bodies = url, bodies
        self.first_tokens = threading.Semaphore(0)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(b,), daemon=True) for b in bodies]

    def start(self, expected_running: int, timeout_s: float) -> None:
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + timeout_s
        for _ in range(expected_running):
            if not self.first_tokens.acquire(timeout=max(deadline - time.monotonic(), 0.01)):
                raise CheckFailed(f"load: not every request had its first token in {timeout_s:.0f} s {self.errors}")

    def _run(self, body: dict) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        body = dict(body, stream=True, ignore_eos=True, temperature=0)
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, headers=headers, timeout=300) as r:
                if r.status_code != 200:
                    self.errors.append(f"HTTP {r.status_code}")
                    return
                first = True
                for line in r.iter_lines():
                    if first and line.startswith("data: {"):
                        first = False
                        self.first_tokens.release()
                    if self._stop.is_set():
                        return
        except httpx.HTTPError as e:
            self.errors.append(repr(e))

    def stop(self) -> None:
        self._stop.set()


def tokens(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def check_load() -> tuple[list[dict], int]:
    """Three requests: a and b share 32 prompt tokens (two full blocks); c shares nothing. Long outputs."""
    prefix = tokens(1000, 32)
    return [{"prompt": prefix + tokens(2000, 8), "max_tokens": 900},
            {"prompt": prefix + tokens(3000, 12), "max_tokens": 900},
            {"prompt": tokens(4000, 24), "max_tokens": 900}], 3


def showcase_load() -> tuple[list[dict], int]:
    """A shared 64-token system prompt for three requests, five others of assorted lengths, 6 run at once."""
    system = tokens(5000, 64)
    bodies = [{"prompt": system + tokens(6000 + 100 * i, 20 + 7 * i), "max_tokens": 700} for i in range(3)]
    bodies += [{"prompt": tokens(8000 + 300 * i, n), "max_tokens": 700} for i, n in enumerate((150, 90, 210, 40, 120))]
    return bodies, 6


# ---- the browser ------------------------------------------------------------------------------------------
class DevTools:
    """The Chrome DevTools protocol over a websocket: call(method, **params) -> result."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, timeout_s: float = 30, **params) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CheckFailed(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CheckFailed(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")



def start_chromium(tmp: Path, stack: ExitStack, timeout_s: float) -> DevTools:
    binary = chromium_binary()
    if binary is None:
        raise CheckFailed("chromium: not found (Debian/Ubuntu: apt-get install chromium)")
    profile = tmp / "chromium-profile"
    log = tmp / "chromium.log"
    proc = start([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"], log, stack)
    port_file = profile / "DevToolsActivePort"
    port = wait_for("Chromium opens DevTools", lambda: port_file.is_file() and port_file.read_text().split("\n")[0],
                    timeout_s, proc, log)

    def page_target():
        try:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None
        return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

    from websockets.sync.client import connect

    ws_url = wait_for("Chromium lists its page", page_target, timeout_s, proc, log)
    return DevTools(stack.enter_context(connect(ws_url, max_size=None, open_timeout=30, proxy=None)))


def read_dashboard(tools: DevTools, url: str, min_updates: int, timeout_s: float, screenshot: Path | None) -> dict:
    credentials = base64.b64encode(f"dashboard:{API_KEY}".encode()).decode()
    tools.call("Network.enable")
    tools.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {credentials}"})
    tools.call("Emulation.setDeviceMetricsOverride", width=1480, height=1000, deviceScaleFactor=1, mobile=False)
    tools.call("Page.enable")
    tools.call("Page.navigate", url=url + "/dashboard")
    wait_for(f"the page renders {min_updates} times",
             lambda: (tools.evaluate("+(document.body && document.body.dataset.updates) || 0") or 0) >= min_updates,
             timeout_s)
    dom = tools.evaluate(READ_DOM)
    if screenshot is not None:
        height = tools.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        tools.call("Emulation.setDeviceMetricsOverride", width=1480, height=int(height), deviceScaleFactor=1, mobile=False)
        data = tools.call("Page.captureScreenshot", format="png", timeout_s=60)["data"]
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(data))
    return dom


def run_check(tmp: Path, screenshot: Path | None = None, showcase: bool = False, peak: tuple[float, float] | None = None,
              start_timeout_s: float = 240) -> Result:
    seconds: dict[str, float] = {}
    extra = ["--max-num-seqs", "6"] if showcase else []
    if peak is not None:
        extra += ["--peak-flops", f"{peak[0] / 1e12:.6g}", "--peak-bandwidth", f"{peak[1] / 1e12:.6g}"]
    with ExitStack() as stack:
        t = time.monotonic()
        url = start_kvserve(tmp, stack, extra, start_timeout_s)
        seconds["kvserve start"] = time.monotonic() - t
        headers = {"Authorization": f"Bearer {API_KEY}"}
        warm = httpx.post(url + "/v1/completions", headers=headers, timeout=120,
                          json={"prompt": tokens(20000, 64), "max_tokens": 1, "temperature": 0})
        if warm.status_code != 200:
            raise CheckFailed(f"warm-up: HTTP {warm.status_code}: {warm.text[:300]}")
        bodies, running = showcase_load() if showcase else check_load()
        load = Load(url, bodies)
        stack.callback(load.stop)
        t = time.monotonic()
        load.start(running, 180)
        seconds["load running"] = time.monotonic() - t
        t = time.monotonic()
        tools = start_chromium(tmp, stack, 60)
        dom = read_dashboard(tools, url, 3 if showcase else 2, 60, screenshot)
        seconds["browser"] = time.monotonic() - t
        if load.errors:
            raise CheckFailed(f"load: {load.errors}")
    return Result(dom, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the page here")
    parser.add_argument("--showcase", action="store_true", help="a richer load and a measured CPU peak (for the picture)")
    args = parser.parse_args()
    peak = None
    if args.showcase:
        import torch

        from engine.tools.peaks import measure_cpu

        torch.set_num_threads(1)  # the server runs on one thread
        peak = measure_cpu()
    with tempfile.TemporaryDirectory(prefix="kvserve-dashboard-") as tmp:
        try:
            result = run_check(Path(tmp), args.screenshot, args.showcase, peak)
        except CheckFailed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
    print(json.dumps(result.dom, indent=2))
    print("seconds:", {k: round(v, 1) for k, v in result.seconds.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
