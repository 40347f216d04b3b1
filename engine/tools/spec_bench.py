"""`kvserve bench --speculative-method ngram ...`: the same workload with and without speculative decoding,
both engines loaded, rounds alternating (order rotating each round) so machine drift hits both alike.

Reports each side's output tok/s (the median round), the per-round ratios and their median, and the
speculation's own figures over all rounds: draft tokens, accepted tokens, acceptance rate and mean accepted
length per draft (accepted + 1, the bonus token). Greedy, EOS ignored: both sides produce the same tokens
(the speculative engine's exactness), which is checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from ..config import EngineArgs


def spec_summary(stats: list) -> dict:
    """Sum of the steps' SpecDecodeStats."""
    drafts = sum(s.spec_decode.num_drafts for s in stats if s.spec_decode is not None)
    draft_tokens = sum(s.spec_decode.num_draft_tokens for s in stats if s.spec_decode is not None)
    accepted = sum(s.spec_decode.num_accepted_tokens for s in stats if s.spec_decode is not None)
    return {"num_drafts": drafts, "num_draft_tokens": draft_tokens, "num_accepted_tokens": accepted,
            "acceptance_rate": accepted / draft_tokens if draft_tokens else None,
            "mean_accepted_length": 1 + accepted / drafts if drafts else None}


def run_spec_comparison(args: argparse.Namespace, eargs: EngineArgs, wl, results: dict) -> dict:
    from .bench import EngineRun, _median_of

    sides = {"without": EngineRun(dataclasses.replace(eargs, speculative_config=None)),
             "with": EngineRun(eargs)}
    for engine in sides.values():
        engine.warm_up(wl)
    rounds: dict[str, list[dict]] = {name: [] for name in sides}
    spec_stats: list = []
    names = list(sides)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            rounds[name].append(sides[name].run(wl))
            if name == "with":
                spec_stats.extend(sides[name].last_stats)
        print(f"round {r}: without {rounds['without'][-1]['output_tok_s']:7.1f}, with speculation "
              f"{rounds['with'][-1]['output_tok_s']:7.1f} output tok/s", flush=True)
    ratios = [a["output_tok_s"] / b["output_tok_s"] for a, b in zip(rounds["with"], rounds["without"])]
    spec = spec_summary(spec_stats)
    out = {name: _median_of(rounds[name]) for name in names}
    for side in out.values():
        side.pop("steps", None)
    out["with_over_without"] = statistics.median(ratios)
    out["with_over_without_rounds"] = ratios
    out["speculation"] = {**spec, "config": dataclasses.asdict(eargs.speculative_config)}
    print(f"without speculation: {out['without']['output_tok_s']:8.1f} output tok/s (median of {args.rounds})")
    print(f"with speculation   : {out['with']['output_tok_s']:8.1f} output tok/s   with / without = "
          f"{out['with_over_without']:.2f}x (median of per-round ratios)")
    rate, length = spec["acceptance_rate"], spec["mean_accepted_length"]
    print(f"speculation: {spec['num_drafts']} drafts, {spec['num_draft_tokens']} draft tokens, "
          f"{spec['num_accepted_tokens']} accepted"
          + ("" if rate is None else f" (acceptance rate {rate:.2f}, mean accepted length {length:.2f})"))
    results["speculative"] = out
    return results
