"""`kvserve generate "prompt"`: offline generation, streamed to the terminal token by token."""

from __future__ import annotations

import argparse
import sys
import time

from .config import EngineArgs
from .sampling_params import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="+", help="prompt text (several are generated together)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--sample-seed", type=int, default=None, help="per-request sampling seed")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--log-level", default="WARNING")
    EngineArgs.add_cli_args(parser)


def run(args: argparse.Namespace) -> int:
    from .engine import LLMEngine

    engine = LLMEngine.from_args(EngineArgs.from_cli_args(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.sample_seed)
    for i, prompt in enumerate(args.prompt):
        if args.chat:
            prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                          add_generation_prompt=True)
        engine.add_request(str(i), prompt, params)
    stream = len(args.prompt) == 1
    texts = [""] * len(args.prompt)
    t0, n_tokens = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        for d in engine.step().deltas:
            n_tokens += len(d.new_token_ids)
            texts[int(d.request_id)] += d.new_text
            if stream:
                sys.stdout.write(d.new_text)
                sys.stdout.flush()
    if stream:
        sys.stdout.write("\n")
    else:
        for prompt, text in zip(args.prompt, texts):
            print(f"--- {prompt!r}\n{text}")
    dt = time.perf_counter() - t0
    print(f"[{n_tokens} tokens in {dt:.2f} s, {n_tokens / dt:.1f} tok/s]", file=sys.stderr)
    return 0
