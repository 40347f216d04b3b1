"""lm-evaluation-harness against a running kvserve, and the same task scored offline from the engine itself.

    python scripts/eval_lm.py                 # serve the default model, run lm_eval on the shipped task, print acc
    python scripts/eval_lm.py --model DIR     # another model directory (its tokenizer is what lm_eval uses)
    python scripts/eval_lm.py --check         # also score the task offline and require the same accuracy

lm_eval's `local-completions` model asks for each (context, choice) pair's log-likelihood with one
/v1/completions request per batch of prompts (a list of token-id lists), `echo: true, logprobs: 1,
max_tokens: 1`, and sums the echoed logprobs of the choice's tokens. `offline_accuracy` does the same sums
from `SamplingParams(prompt_logprobs=0)` in the offline engine, tokenizing the pair as lm_eval does, so the
two accuracies must be equal. The task (evals/lm_eval_tasks/kvserve_mc) is a local JSONL file: nothing is
downloaded (HF_DATASETS_OFFLINE=1), and lm_eval's tokenizer is the model's local directory.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TASK = "kvserve_mc"
TASKS_DIR = ROOT / "evals" / "lm_eval_tasks"
DOCS = TASKS_DIR / TASK / "questions.jsonl"


def load_docs() -> list[dict]:
    return [json.loads(line) for line in DOCS.read_text().splitlines() if line.strip()]


def context_of(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"  # the task YAML's doc_to_text


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """lm_eval's split of a (context, continuation) pair: trailing spaces move to the continuation, the whole
    text is tokenized at once, and the context's own token count says where the continuation begins."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return whole, len(ctx)


def offline_scores(llm, docs: list[dict]) -> list[list[float]]:
    """Per document, each choice's summed continuation logprob, from the engine's own prompt logprobs."""
    from engine import SamplingParams

    pairs = [encode_pair(llm.tokenizer, context_of(d), " " + c) for d in docs for c in d["choices"]]
    outs = llm.generate([ids for ids, _ in pairs], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
    flat = [sum(lp.logprob for lp in out.prompt_logprobs[ctxlen:]) for out, (_, ctxlen) in zip(outs, pairs)]
    scores, i = [], 0
    for d in docs:
        scores.append(flat[i:i + len(d["choices"])])
        i += len(d["choices"])
    return scores


def accuracy(scores: list[list[float]], docs: list[dict]) -> float:
    """acc = mean over documents of [argmax over choices of the summed continuation logprobs == answer]."""
    return sum(s.index(max(s)) == d["answer"] for s, d in zip(scores, docs)) / len(docs)


def offline_accuracy(llm, docs: list[dict]) -> float:
    return accuracy(offline_scores(llm, docs), docs)


def lm_eval_command(base_url: str, model_name: str, tokenizer_dir: str, out_dir: str,
                    batch_size: int = 8) -> list[str]:
    """`batch_size` prompts go in each /v1/completions request (a list of token-id lists)."""
    model_args = ",".join([f"model={model_name}", f"base_url={base_url}/v1/completions",
                           "tokenizer_backend=huggingface", f"tokenizer={tokenizer_dir}", "tokenized_requests=True",
                           "num_concurrent=1", "max_retries=1"])
    return [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
            "--tasks", TASK, "--include_path", str(TASKS_DIR), "--batch_size", str(batch_size),
            "--output_path", out_dir, "--log_samples"]


def lm_eval_env() -> dict[str, str]:
    return dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                OPENAI_API_KEY=os.environ.get("OPENAI_API_KEY", "unused"), TOKENIZERS_PARALLELISM="false")


def run_lm_eval(base_url: str, model_name: str, tokenizer_dir: str, out_dir: str, timeout: float = 900) -> float:
    """Run lm_eval (from the repository root: the task's data path is relative to it); its accuracy."""
    subprocess.run(lm_eval_command(base_url, model_name, tokenizer_dir, out_dir), cwd=ROOT, env=lm_eval_env(),
                   check=True, timeout=timeout)
    (path,) = glob.glob(os.path.join(out_dir, "**", "results_*.json"), recursive=True)
    return json.loads(Path(path).read_text())["results"][TASK]["acc,none"]


def lm_eval_scores(out_dir: str) -> list[list[float]]:
    """Per document (in task order), lm_eval's log-likelihood of each choice, from its logged samples."""
    (path,) = glob.glob(os.path.join(out_dir, "**", f"samples_{TASK}_*.jsonl"), recursive=True)
    samples = sorted((json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()),
                     key=lambda s: s["doc_id"])
    return [[float(r[0]) for r in s["filtered_resps"]] for s in samples]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base_url: str, server: subprocess.Popen, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return httpx.get(f"{base_url}/v1/models", timeout=5).json()["data"][0]["id"]
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not become ready in time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF model directory (default: the default model)")
    p.add_argument("--out", default=str(ROOT / "eval-lm-out"), help="lm_eval's output directory")
    p.add_argument("--check", action="store_true", help="also score offline and require the same accuracy")
    args = p.parse_args(argv)
    from engine.models.resolve import resolve_model

    model_dir = str(resolve_model(args.model).path)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd + (["--model", model_dir] if args.model else []), cwd=ROOT)
    try:
        name = _wait_ready(base_url, server)
        acc = run_lm_eval(base_url, name, model_dir, args.out)
    finally:
        server.terminate()
        server.wait(60)
    print(f"lm_eval {TASK} acc = {acc:.4f} ({name}, {len(load_docs())} questions)")
    if args.check:
        from engine import LLM

        offline = offline_accuracy(LLM(model_dir), load_docs())
        print(f"offline acc from the engine's prompt logprobs = {offline:.4f}")
        if offline != acc:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
