"""Host-side time of one decode step with many sequences: schedule + prepare + sample + the engine's own work.

    .venv/bin/python scripts/host_step.py [--num-seqs 256] [--sampling greedy|mixed] [--steps 30]

A random tiny Llama (1 layer, hidden 64) on the CPU makes the model's share of a step small, so what is left
is the host's work per step. The model forward and the logits projection are timed (wrapped) and subtracted
from the time of `LLMEngine.step()`; `scheduler.schedule()` is timed apart. Times are the thread's CPU time
(`time.thread_time`, one torch thread), which waiting for a core on a busy machine does not inflate; the
step's wall time is reported too. Uses only the public engine API
(`LLM`, `engine.step()`, `runner.model`), so the same script measures any revision: run it with PYTHONPATH
pointing at that revision's checkout (scripts/ab_host_step.sh does, alternating two revisions).

Prints one JSON line: medians over the timed steps, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch


def tiny_model(path: str, vocab: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(path)


# On a shared machine wall time includes waiting for a core; the thread's own CPU time does not, so it is the
# steadier measure of work done (torch runs with one intra-op thread here: its ops run on this thread).
CLOCK = time.thread_time


class Timed:
    """Wraps a callable and sums the (thread CPU) time spent in it."""

    def __init__(self, fn):
        self.fn, self.total = fn, 0.0

    def __call__(self, *args, **kwargs):
        t0 = CLOCK()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total += CLOCK() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="timed decode steps")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--sampling", choices=("greedy", "mixed"), default="greedy",
                    help="mixed: a quarter each greedy, temperature + seed, top-k/top-p, penalties + logprobs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from engine import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as model_dir:
        tiny_model(model_dir, args.vocab)
        llm = LLM(model_dir, device="cpu", max_num_seqs=args.num_seqs,
                  max_num_batched_tokens=max(2048, args.num_seqs * args.prompt_len), cpu_threads=args.threads)
    engine = llm.engine
    n_out = args.steps + 20
    kinds = [SamplingParams(temperature=0, max_tokens=n_out, ignore_eos=True)]
    if args.sampling == "mixed":
        kinds += [SamplingParams(temperature=0.8, seed=1, max_tokens=n_out, ignore_eos=True),
                  SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_tokens=n_out, ignore_eos=True),
                  SamplingParams(temperature=0.7, presence_penalty=0.5, frequency_penalty=0.2,
                                 repetition_penalty=1.1, logprobs=2, max_tokens=n_out, ignore_eos=True)]
    g = torch.Generator().manual_seed(0)
    for i in range(args.num_seqs):
        prompt = torch.randint(3, args.vocab, (args.prompt_len,), generator=g).tolist()
        engine.add_request(f"r{i}", prompt, kinds[i % len(kinds)])

    model = engine.runner.model
    forward, logits = Timed(model.forward), Timed(model.compute_logits)
    model.forward, model.compute_logits = forward, logits  # instance attributes shadow the methods
    schedule = Timed(engine.scheduler.schedule)
    engine.scheduler.schedule = schedule
    for _ in range(10):  # prefill, then a few decode steps
        while engine.step().stats.num_prompt_tokens:
            pass
    rows = []
    for _ in range(args.steps):
        before = (forward.total, logits.total, schedule.total)
        w0, t0 = time.perf_counter(), CLOCK()
        out = engine.step()
        total, wall = CLOCK() - t0, time.perf_counter() - w0
        f, lg, s = (a - b for a, b in zip((forward.total, logits.total, schedule.total), before))
        rows.append({"step": total, "model": f, "logits": lg, "schedule": s, "host": total - f - lg,
                     "wall": wall, "tokens": out.stats.num_generation_tokens})
    med = {k: round(statistics.median(r[k] for r in rows) * 1e3, 3)
           for k in ("step", "model", "logits", "schedule", "host", "wall")}
    med["tokens_per_step"] = statistics.median(r["tokens"] for r in rows)
    print(json.dumps({"num_seqs": args.num_seqs, "sampling": args.sampling, "vocab": args.vocab, **med,
                      "revision_path": sys.modules["engine"].__file__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
