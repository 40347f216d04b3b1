"""Server overhead: output tok/s through HTTP vs offline `LLM.generate`, same workload, one run.

    python -m server.bench_overhead                       # default model, 32 streams x 64 tokens, 2 rounds
    python -m server.bench_overhead --model DIR --concurrency 32 --max-tokens 128 --rounds 3

The offline side runs `LLM.generate` in this process. The HTTP side runs the real `kvserve serve` in a
subprocess (own interpreter, own GIL, as deployed) and this process's client opens `--concurrency`
streaming requests at once (ignore_eos, greedy, fixed prompts; output tokens counted from `usage`). Rounds
alternate offline/HTTP so that drift in machine load hits both; the ratio is of the medians. Prefix caching
is off so every round does the same work. Both sides use the same torch intra-op thread count.
Note: the client shares this machine's cores with the server; on a real deployment it would not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

from server.process import ServerProcess

TOPICS = ["dragon", "lighthouse", "robot", "river", "violin", "desert", "comet", "garden"]


def prompts(n: int) -> list[str]:
    return [f"Request {i}: write a long story about a {TOPICS[i % len(TOPICS)]} and a {TOPICS[(i * 3 + 1) % 8]}."
            for i in range(n)]


def run_offline(llm, texts: list[str], max_tokens: int) -> tuple[int, float]:
    from engine import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.generate(texts, params)
    return sum(len(o.token_ids) for o in outs), time.perf_counter() - t0


async def _stream_one(client, text: str, max_tokens: int) -> int:
    body = {"prompt": text, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    return tokens


async def run_http(url: str, texts: list[str], max_tokens: int) -> tuple[int, float]:
    import httpx

    limits = httpx.Limits(max_connections=len(texts) + 4, max_keepalive_connections=len(texts) + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=3600) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(_stream_one(client, t, max_tokens) for t in texts))
        return sum(counts), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the default model)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="intra-op threads on both sides (default 1: on a busy 2-core machine more is slower)")
    args = p.parse_args(argv)

    import torch

    from engine import LLM

    torch.set_num_threads(args.torch_threads)
    engine_flags = ["--no-prefix-caching"] + (["--model", args.model] if args.model else [])
    texts = prompts(args.concurrency)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min); "
          f"torch {torch.__version__}, {args.torch_threads} intra-op thread(s)")
    server = ServerProcess("--no-access-log", "--log-level", "warning", *engine_flags, threads=args.torch_threads)
    try:
        llm = LLM(args.model, enable_prefix_caching=False)
        server.start(timeout=600)
        print(f"model: {llm.engine.model_config.name}; workload: {args.concurrency} concurrent requests x "
              f"{args.max_tokens} output tokens (ignore_eos, greedy)")
        run_offline(llm, texts[:2], 4)  # warm-up both sides
        asyncio.run(run_http(server.url, texts[:2], 4))
        offline, http, ratios = [], [], []
        for r in range(args.rounds):
            sides = ["offline", "http"] if r % 2 == 0 else ["http", "offline"]
            rates = {}
            for side in sides:
                if side == "offline":
                    n, dt = run_offline(llm, texts, args.max_tokens)
                    label = "offline LLM.generate"
                else:
                    n, dt = asyncio.run(run_http(server.url, texts, args.max_tokens))
                    label = f"HTTP, {args.concurrency} streams"
                rates[side] = n / dt
                print(f"round {r}: {label:22s} {n} tokens in {dt:6.2f} s = {n / dt:7.2f} tok/s", flush=True)
            offline.append(rates["offline"])
            http.append(rates["http"])
            ratios.append(rates["http"] / rates["offline"])
            print(f"round {r}: ratio {ratios[-1]:.3f}", flush=True)
    finally:
        code = server.stop()
    print(f"server exit code {code}; load average now {os.getloadavg()[0]:.2f}")
    print(f"per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"RESULT: HTTP/offline output tok/s, median of per-round ratios = {statistics.median(ratios):.3f}x "
          f"(medians: {statistics.median(http):.2f} / {statistics.median(offline):.2f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
