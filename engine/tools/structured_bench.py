"""Throughput with a JSON schema on every request vs the same workload unconstrained, side by side in one run.

    python -m engine.tools.structured_bench [--model PATH] [--requests 16] [--max-tokens 96] [--rounds 3]

Each round runs the batch twice, alternating which goes first: every request with `SCHEMA` (the grammar ends
it; max_tokens caps it), and every request unconstrained with ignore_eos and, as its max_tokens, the length
its constrained twin produced (measured once before the rounds: seeded sampling makes the same tokens every
time). Both sides therefore make the same tokens per request and run the same batch sizes step by step; only
the grammar work differs. (Letting the unconstrained side run to max_tokens instead measures mostly that the
JSON requests finish at different times and leave a thinner batch behind: on the default model that alone
read as 0.51-0.58x.)
Output tokens per second of wall time are compared as a ratio per round; the median ratio is the figure
(docs/benchmarks.md). The schemas compile once, before the first round (the server compiles off the engine
thread and caches by schema, so steady-state serving pays no compile either).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 24},
    "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 2, "maxItems": 4},
    "employed": {"type": "boolean"}}, "required": ["name", "age", "city", "skills", "employed"],
    "additionalProperties": False}
PROMPT = "Describe a fictional person as JSON with name, age, city, skills and employed. Person number {i}:"


def run_batch(llm, prompts, params) -> tuple[int, float]:
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    dt = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outs for c in o.outputs), dt


def main(argv: list[str] | None = None) -> dict:
    from engine import LLM, SamplingParams
    from engine.structured.spec import StructuredOutputsParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF directory or GGUF (default: the default model)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    llm = LLM(args.model)
    prompts = [PROMPT.format(i=i) for i in range(args.requests)]
    spec = StructuredOutputsParams(json=SCHEMA)
    constrained = [SamplingParams(temperature=0.7, seed=i, max_tokens=args.max_tokens, structured_outputs=spec)
                   for i in range(args.requests)]
    llm.engine.grammars.compile(spec)
    lengths = [len(o.outputs[0].token_ids) for o in llm.generate(prompts, constrained)]  # also the warm-up
    free = [SamplingParams(temperature=0.7, seed=i, max_tokens=n, ignore_eos=True) for i, n in enumerate(lengths)]
    rounds = []
    for r in range(args.rounds):
        order = [("free", free), ("json", constrained)]
        if r % 2:
            order.reverse()
        res = {name: run_batch(llm, prompts, params) for name, params in order}
        tps = {name: toks / dt for name, (toks, dt) in res.items()}
        rounds.append({"free_tok_s": tps["free"], "json_tok_s": tps["json"], "ratio": tps["json"] / tps["free"],
                       "json_tokens": res["json"][0], "free_tokens": res["free"][0]})
        print(f"round {r}: unconstrained {tps['free']:.1f} tok/s, JSON schema {tps['json']:.1f} tok/s, "
              f"ratio {tps['json'] / tps['free']:.3f} ({res['json'][0]} vs {res['free'][0]} tokens)", flush=True)
    check = llm.generate(prompts[:4], constrained[:4])
    valid = sum(1 for o in check if o.finish_reason == "stop" and isinstance(json.loads(o.text), dict))
    summary = {"median_ratio": statistics.median(r["ratio"] for r in rounds), "rounds": rounds,
               "requests": args.requests, "max_tokens": args.max_tokens, "valid_json_of_4": valid}
    print(f"median ratio (JSON schema / unconstrained): {summary['median_ratio']:.3f}; "
          f"{valid}/4 sampled outputs parse")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    llm.shutdown()
    return summary


if __name__ == "__main__":
    main()
