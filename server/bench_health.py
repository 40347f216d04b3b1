"""/health latency while other clients make the server tokenize, template and serialize as much as it allows.

    python -m server.bench_health                                  # tiny random model, 8192-token context, 20 s
    python -m server.bench_health --model DIR --seconds 60         # any model kvserve serves
    python -m server.bench_health --base-url http://127.0.0.1:8000 # a server that is already running

A liveness probe that waits seconds for /health kills a healthy server. This starts `kvserve serve` in a
subprocess (its own interpreter and GIL, as deployed) unless given `--base-url`, then runs, for `--seconds`:

- heavy clients, one thread each in a process of their own, back to back: /tokenize with the longest text the server tokenizes
  (refused after tokenizing: more tokens than the context), /tokenize of a context's worth of text with
  `return_token_strs`, a chat request with the longest message text (templated, tokenized, refused), a
  3.5 MB prompt (refused before tokenizing), and a 3 MB prompt of token ids (parsed off the loop, refused:
  longer than the context);
- a prober: GET /health every 25 ms; and a 4-token chat completion every 0.5 s.

It prints the heavy requests by status and the prober's latency percentiles. The goal is /health under
100 ms at p99. The clients share the machine's cores with the server, so a busy machine adds its own delay.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from .config import PROMPT_CHARS_PER_TOKEN

WORDS = ("the of and to in is was for on that with as by at from his her they this had are not but be have one "
         "all were which their there been has when who will more would no if out so said what up its about").split()


def text_of(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        word = rng.choice(WORDS)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:chars]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    health_s: list[float] = field(default_factory=list)
    small_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def heavy_bodies(max_model_len: int) -> dict[str, tuple[str, bytes]]:
    limit = PROMPT_CHARS_PER_TOKEN * max_model_len
    return {
        "tokenize-longest": ("/tokenize", json.dumps({"prompt": text_of(limit - 16), "return_token_strs": True}).encode()),
        "tokenize-context": ("/tokenize", json.dumps({"prompt": text_of(3 * max_model_len), "return_token_strs": True}).encode()),
        "chat-longest": ("/v1/chat/completions", json.dumps(
            {"messages": [{"role": "user", "content": text_of(limit - 64)}], "max_tokens": 1}).encode()),
        "oversize-prompt": ("/v1/completions", json.dumps({"prompt": "x" * 3_500_000, "max_tokens": 1}).encode()),
        "ids-3mb": ("/v1/completions", json.dumps(
            {"prompt": [random.Random(1).randrange(10000, 40000) for _ in range(450_000)], "max_tokens": 1}).encode()),
    }


def _heavy(base_url: str, bodies: dict[str, tuple[str, bytes]], seconds: float, headers: dict[str, str],
           results) -> None:
    """In a process of its own (so that its threads do not compete with the prober for one GIL): each heavy
    client in a thread, back to back, for `seconds`; puts a Counter of (name, status) on `results`."""
    statuses, lock, deadline = Counter(), threading.Lock(), time.monotonic() + seconds

    def client(name: str, path: str, body: bytes) -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as c:
            while time.monotonic() < deadline:
                status = c.post(path, content=body).status_code
                with lock:
                    statuses[(name, status)] += 1

    threads = [threading.Thread(target=client, args=(name, *spec)) for name, spec in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(statuses)


def run(base_url: str, max_model_len: int, seconds: float, headers: dict[str, str] | None = None,
        only: list[str] | None = None) -> Tally:
    import multiprocessing

    tally, stop = Tally(), threading.Event()
    headers = {"Content-Type": "application/json", **(headers or {})}
    bodies = {name: spec for name, spec in heavy_bodies(max_model_len).items() if not only or name in only}
    mp = multiprocessing.get_context("spawn")
    results = mp.Queue()
    heavy = mp.Process(target=_heavy, args=(base_url, bodies, seconds, headers, results), daemon=True)

    def probe() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                tally.health_s.append(time.perf_counter() - t0)
                time.sleep(0.025)

    def small() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 4})
                assert r.status_code == 200, r.text
                tally.small_s.append(time.perf_counter() - t0)
                time.sleep(0.5)

    heavy.start()
    time.sleep(2.0)  # the heavy process starts (imports) and gets going
    probes = [threading.Thread(target=probe, daemon=True), threading.Thread(target=small, daemon=True)]
    for t in probes:
        t.start()
    heavy.join(seconds + 180)
    stop.set()
    for t in probes:
        t.join(180)
    tally.statuses = results.get(timeout=10)
    return tally


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def report(t: Tally) -> str:
    lines = [f"heavy requests: {', '.join(f'{n} {s}: {c}' for (n, s), c in sorted(t.statuses.items()))}"]
    h = [x * 1000 for x in t.health_s]
    lines.append(f"/health latency over {len(h)} probes: p50 {statistics.median(h):.1f} ms, p90 {percentile(h, 90):.1f} ms, "
                 f"p99 {percentile(h, 99):.1f} ms, max {max(h):.1f} ms")
    s = [x * 1000 for x in t.small_s]
    lines.append(f"4-token chat completion over {len(s)} tries: p50 {statistics.median(s):.0f} ms, max {max(s):.0f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=None, help="a running server (default: start one)")
    p.add_argument("--model", default=None, help="model directory (default: a tiny random Llama)")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--only", nargs="*", default=None, help="run only these heavy clients (by name)")
    args = p.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.base_url:
        print(report(run(args.base_url, args.max_model_len, args.seconds, headers, args.only)))
        return 0
    import tempfile
    from pathlib import Path

    from .process import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from engine.models.tiny import save_tiny_llama

            model = str(save_tiny_llama(Path(tmp) / "tiny", max_position_embeddings=args.max_model_len))
        with ServerProcess("--model", model, "--max-model-len", str(args.max_model_len), "--num-kv-blocks", "1024",
                           "--no-access-log", "--log-level", "warning", threads=1) as server:
            server.start()
            print(report(run(server.url, args.max_model_len, args.seconds, headers, args.only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
