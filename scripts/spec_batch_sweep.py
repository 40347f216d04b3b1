"""Where speculative decoding stops paying: output tok/s with and without it, per batch size, same run.

    .venv/bin/python scripts/spec_batch_sweep.py --batch-sizes 1,2,4,8,16 --output-len 32 --rounds 2

For each batch size B and each workload (random prompts; the shipped repetitive prompts, whose answers repeat
the prompt) it runs B requests at once, EOS ignored, on two engines loaded side by side: one without
speculation and one with it (`--method ngram` by default, never switched off by batch size here:
`disable_by_batch_size` is set above the largest B). Rounds alternate which engine goes first. It prints the
median per-round ratio with / without for every (workload, B) and the crossover: the largest batch size up to
which speculation still gained on the repetitive workload (the one it is for), which is what
`SpeculativeConfig.disable_by_batch_size` defaults to. Greedy, so both engines produce the same tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import EngineArgs  # noqa: E402
from engine.tools.bench import EngineRun, make_repetitive_workload, make_workload  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--output-len", default="32")
    ap.add_argument("--input-len", default="128", help="random prompts' length")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--method", default="ngram", choices=("ngram", "draft"))
    ap.add_argument("--speculative-model", default=None)
    ap.add_argument("--draft-layers", type=int, default=None)
    ap.add_argument("--num-speculative-tokens", type=int, default=4)
    ap.add_argument("--cpu-threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    spec = {"method": args.method, "num_speculative_tokens": args.num_speculative_tokens,
            "disable_by_batch_size": max(sizes) + 1}
    if args.method == "draft":
        spec.update(model=args.speculative_model, draft_layers=args.draft_layers)
    base = EngineArgs(model=args.model, max_model_len=1024, max_num_seqs=max(sizes), cpu_threads=args.cpu_threads)
    sides = {"without": EngineRun(base), "with": EngineRun(dataclasses.replace(base, speculative_config=spec))}
    tokenizer = sides["without"].llm.engine.tokenizer
    vocab = sides["without"].llm.engine.model_config.vocab_size
    table: dict[str, dict[int, dict]] = {"random": {}, "repetitive": {}}
    for name, engine in sides.items():
        engine.warm_up(make_workload(max(sizes), args.input_len, args.output_len, 0, vocab))
    for b in sizes:
        loads = {"random": make_workload(b, args.input_len, args.output_len, 0, vocab),
                 "repetitive": make_repetitive_workload(b, args.output_len, 0, tokenizer)}
        for wname, wl in loads.items():
            tok_s: dict[str, list[float]] = {"without": [], "with": []}
            order = list(sides)
            accepted = drafted = 0
            for r in range(args.rounds):
                for side in order[r % 2:] + order[:r % 2]:
                    tok_s[side].append(sides[side].run(wl)["output_tok_s"])
                    if side == "with":
                        for s in sides[side].last_stats:
                            if s.spec_decode is not None:
                                drafted += s.spec_decode.num_draft_tokens
                                accepted += s.spec_decode.num_accepted_tokens
            ratios = [a / b_ for a, b_ in zip(tok_s["with"], tok_s["without"])]
            table[wname][b] = {"ratio": statistics.median(ratios), "ratios": ratios,
                               "without_tok_s": statistics.median(tok_s["without"]),
                               "with_tok_s": statistics.median(tok_s["with"]),
                               "acceptance_rate": accepted / drafted if drafted else None}
            row = table[wname][b]
            rate = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.2f}"
            print(f"batch {b:3d} {wname:10s}: with / without = {row['ratio']:.2f}x "
                  f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}; acceptance {rate})", flush=True)
    print("\n| batch size | " + " | ".join(f"{w} with / without" for w in table) + " |")
    print("|---:|" + "---:|" * len(table))
    for b in sizes:
        print(f"| {b} | " + " | ".join(f"{table[w][b]['ratio']:.2f}x" for w in table) + " |")
    gained = [b for b in sizes if table["repetitive"][b]["ratio"] > 1.0]
    crossover = max((b for b in sizes if all(table["repetitive"][x]["ratio"] > 1.0 for x in sizes if x <= b)),
                    default=None)
    print(f"\ncrossover: speculation gains on the repetitive workload up to batch size {crossover} "
          f"(every size at or below it gained; sizes that gained: {gained})")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "crossover": crossover, "speculative": spec}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
