"""kvserve against its peers on the CPU, side by side: the same workload, the same load tester, alternating rounds.

For each round, each server in turn (kvserve fp32, kvserve int8 weights + int8 KV, kvserve int4, kvserve w8a8, vLLM's CPU build,
llama-cpp-python's server) is started on 127.0.0.1, waited for (`GET /v1/models` answers), given the same
workloads with kvserve's own load tester (`python -m loadtest`: at 32 concurrent streams and one at a time),
and stopped before the next one starts. Rounds alternate (A B C A B C ...) so that a shared machine's load
falls on every server alike. Prints, per workload, the medians over rounds of output tok/s, TPOT and TTFT
(each run's own median) with each one's ratio to the first server, and writes every run's aggregates as JSON.

The peers live in their own virtual environments outside the repository (docs/benchmarks.md says how they
were installed); pass their interpreters with --vllm-python and --llamacpp-python. A server whose interpreter
is missing is left out with a message, not faked. Workloads:

    text   chat endpoint, random-word prompts (every server takes them; llama.cpp takes nothing else)
    ids    completions endpoint, token-id prompts (kvserve and vLLM; llama.cpp's server is skipped here)

Every server is stopped in a `finally` (its whole process group: SIGTERM, then SIGKILL), also on Ctrl-C.

    .venv/bin/python scripts/vs_peers_cpu.py --rounds 2 --c32-requests 64 --c1-requests 8 --json peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    name: str
    argv: tuple[str, ...]  # with "{port}" where the port goes
    env: dict[str, str] = field(default_factory=dict)
    workloads: tuple[str, ...] = ("text", "ids")
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model() -> tuple[Path, Path]:
    """(the default model's GGUF file, kvserve's converted fp32 HF directory), converting it if needed."""
    sys.path.insert(0, str(REPO))
    from engine.models.resolve import default_model_path, resolve_model

    hf_dir = resolve_model(None).path
    cfg = json.loads((hf_dir / "config.json").read_text())
    if not cfg.get("architectures") or "quantization_config" in cfg:
        raise SystemExit(f"{hf_dir}/config.json is not a plain HF config (architectures / quantization_config)")
    return default_model_path(), hf_dir


def servers(args, gguf: Path, hf_dir: Path) -> list[Server]:
    kv = (str(REPO / ".venv/bin/python"), "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "{port}",
          "--cpu-threads", str(args.threads), "--log-level", "warning", "--no-access-log")
    every = {
        "kvserve-fp32": Server("kvserve-fp32", kv),
        "kvserve-int8+kv8": Server("kvserve-int8+kv8", kv + ("--quantization", "int8", "--kv-cache-dtype", "int8")),
        "kvserve-int8": Server("kvserve-int8", kv + ("--quantization", "int8")),
        "kvserve-int4": Server("kvserve-int4", kv + ("--quantization", "int4")),
        "kvserve-w8a8": Server("kvserve-w8a8", kv + ("--quantization", "w8a8")),
        "kvserve-w8a8+kv8": Server("kvserve-w8a8+kv8", kv + ("--quantization", "w8a8", "--kv-cache-dtype", "int8")),
        # decode steps through the model's forward, not the one-call C step (engine/worker/cpu_decode.py)
        "kvserve-int8-eager": Server("kvserve-int8-eager", kv + ("--quantization", "int8", "--enforce-eager")),
        "kvserve-w8a8-eager": Server("kvserve-w8a8-eager", kv + ("--quantization", "w8a8", "--enforce-eager")),
        "vllm": Server(
            "vllm",
            (args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir),
             "--served-model-name", "SmolLM2-135M-Instruct", "--dtype", "float32", "--host", "127.0.0.1",
             "--port", "{port}", "--uvicorn-log-level", "warning"),
            env={"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}",
                 "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
            note="fp32, the converted HF directory, OpenMP threads bound to every core"),
        "llamacpp": Server(
            "llamacpp",
            (args.llamacpp_python, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", str(args.threads),
             "--n_ctx", "2048", "--interrupt_requests", "False", "--host", "127.0.0.1", "--port", "{port}"),
            workloads=("text",),
            note="the GGUF file itself (Q4_1); text prompts only; one request at a time"),
    }
    chosen = []
    for name in args.servers.split(","):
        if name not in every:
            raise SystemExit(f"--servers: unknown {name!r}; known: {', '.join(every)}")
        s = every[name]
        if not Path(s.argv[0]).is_file():
            print(f"[skip] {name}: {s.argv[0]} does not exist", file=sys.stderr)
            continue
        chosen.append(s)
    return chosen


def wait_ready(proc: subprocess.Popen, port: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from /v1/models within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of the server's main process (vLLM's engine core is a child: its own peak is not added)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def loadtest(args, port: int, workload: str, conc: int, out: Path) -> dict:
    n = args.c32_requests if conc > 1 else args.c1_requests
    cmd = [str(REPO / ".venv/bin/python"), "-m", "loadtest", "--base-url", f"http://127.0.0.1:{port}",
           "--endpoint", "chat" if workload == "text" else "completions", "--num-requests", str(n),
           "--input-len", args.input_len, "--output-len", args.output_len, "--max-concurrency", str(conc),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.run_timeout)
    if res.returncode != 0 or not out.is_file():
        raise RuntimeError(f"loadtest exited {res.returncode}: {res.stderr[-2000:]}")
    data = json.loads(out.read_text())
    return {k: data.get(k) for k in ("completed", "failed", "failed_by", "duration_s", "total_output_tokens",
                                     "output_throughput", "ttft_ms", "tpot_ms", "itl_ms", "e2el_ms",
                                     "output_tokens_counted_from_chunks", "started_at")}


def run_server(args, s: Server, rnd: int, work: Path) -> dict:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in s.argv]
    log = open(work / f"{s.name}-r{rnd}.log", "w")
    proc = subprocess.Popen(argv, cwd=REPO if s.name.startswith("kvserve") else work, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, **s.env}, start_new_session=True)
    record = {"server": s.name, "round": rnd, "argv": argv, "env": s.env, "runs": {}}
    try:
        record["ready_s"] = wait_ready(proc, port, args.start_timeout)
        for workload in s.workloads:
            if workload not in args.workloads.split(","):
                continue
            for conc in args.concurrency:
                key = f"{workload}-c{conc}"
                t0 = time.perf_counter()
                record["runs"][key] = loadtest(args, port, workload, conc, work / f"{s.name}-r{rnd}-{key}.json")
                r = record["runs"][key]
                print(f"  {s.name:18s} round {rnd} {key:8s} {r['output_throughput']:7.1f} tok/s  "
                      f"TPOT {r['tpot_ms']['median']:7.1f} ms  TTFT {r['ttft_ms']['median']:8.1f} ms  "
                      f"({r['completed']} ok, {r['failed']} failed, {time.perf_counter() - t0:.0f} s)", flush=True)
        record["peak_rss_mb"] = peak_rss_mb(proc.pid)
    except Exception as e:  # one server's failure is reported, the others still run
        record["error"] = f"{type(e).__name__}: {e}"
        print(f"  {s.name}: FAILED in round {rnd}: {record['error']} (log: {log.name})", flush=True)
    finally:
        stop(proc)
        log.close()
    return record


def summarize(records: list[dict], order: list[str]) -> dict:
    table: dict[str, dict[str, dict]] = {}
    for rec in records:
        for key, r in rec["runs"].items():
            if not r["completed"]:
                continue
            row = table.setdefault(key, {}).setdefault(rec["server"], {"tok_s": [], "tpot": [], "ttft": []})
            row["tok_s"].append(r["output_throughput"])
            row["tpot"].append(r["tpot_ms"]["median"])
            row["ttft"].append(r["ttft_ms"]["median"])
    out = {}
    for key, rows in table.items():
        base = rows.get(order[0])
        med = {name: {m: statistics.median(v) for m, v in row.items()} | {"rounds": len(row["tok_s"])}
               for name, row in rows.items()}
        for name, m in med.items():
            if base:
                b = med[order[0]]
                m["tok_s_ratio"] = m["tok_s"] / b["tok_s"]
                m["tpot_ratio"] = m["tpot"] / b["tpot"]
                m["ttft_ratio"] = m["ttft"] / b["ttft"]
        out[key] = med
    return out


def print_table(summary: dict, order: list[str]) -> None:
    for key in sorted(summary):
        base = order[0]
        print(f"\n{key}: medians over rounds (ratio to {base})")
        print("| server | output tok/s | TPOT ms | TTFT ms | rounds |\n|---|---|---|---|---|")
        for name in order:
            m = summary[key].get(name)
            if m is None:
                continue
            ratio = {k: f" ({m[k]:.2f}x)" if k in m else "" for k in ("tok_s_ratio", "tpot_ratio", "ttft_ratio")}
            print(f"| {name} | {m['tok_s']:.1f}{ratio['tok_s_ratio']} | {m['tpot']:.1f}{ratio['tpot_ratio']} | "
                  f"{m['ttft']:.0f}{ratio['ttft_ratio']} | {m['rounds']} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="kvserve-fp32,kvserve-int8+kv8,kvserve-int4,vllm,llamacpp",
                   help="comma-separated, in round order; the first is the baseline of the ratios")
    p.add_argument("--workloads", default="text,ids", help="text (chat, words) and/or ids (completions, token ids)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", default="32,1", type=lambda t: [int(c) for c in t.split(",")],
                   help="comma-separated --max-concurrency values, each one run per server and workload")
    p.add_argument("--c32-requests", type=int, default=64, help="requests of a run with concurrency > 1")
    p.add_argument("--c1-requests", type=int, default=8, help="requests of the one-stream run")
    p.add_argument("--input-len", default="32:256")
    p.add_argument("--output-len", default="64", help="max_tokens, with ignore_eos (llama.cpp's server ignores it)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up requests per run, left out of the stats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="compute threads for every server")
    p.add_argument("--vllm-python", default="/work/peers/vllm/bin/python")
    p.add_argument("--llamacpp-python", default="/work/peers/llamacpp/bin/python")
    p.add_argument("--start-timeout", type=float, default=600.0, help="vLLM's first start compiles for minutes")
    p.add_argument("--run-timeout", type=float, default=1800.0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/vs_peers"), help="server logs and raw results")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    gguf, hf_dir = default_model()
    chosen = servers(args, gguf, hf_dir)
    if not chosen:
        return 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"model: {gguf} (llama.cpp) / {hf_dir} (the others); servers: {', '.join(s.name for s in chosen)}; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    records = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for rnd in range(1, args.rounds + 1):
        for s in chosen:
            records.append(run_server(args, s, rnd, args.workdir))
    order = [s.name for s in chosen]
    summary = summarize(records, order)
    print_table(summary, order)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({
            "started_at": started, "argv": sys.argv, "load_average_end": os.getloadavg(),
            "servers": {s.name: {"argv": list(s.argv), "env": s.env, "note": s.note} for s in chosen},
            "summary": summary, "records": records}, indent=2))
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
