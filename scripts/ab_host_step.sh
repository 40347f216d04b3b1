#!/usr/bin/env bash
# Host-side time of one decode step (scripts/host_step.py) for two revisions, side by side on one machine:
#   scripts/ab_host_step.sh REV_A REV_B ROUNDS [host_step.py arguments...]
# Each revision is checked out into a temporary worktree; this checkout's scripts/host_step.py runs with
# this checkout's .venv and PYTHONPATH at that worktree, so it imports that revision's engine. Runs alternate
# A, B, A, B, ...; the last lines print each side's median host ms per step and the ratio B / A.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 REV_A REV_B ROUNDS [host_step.py args...]" >&2; exit 2; }
rev_a=$1 rev_b=$2 rounds=$3; shift 3
py=${PYTHON:-$PWD/.venv/bin/python}
script=$PWD/scripts/host_step.py
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/a" >/dev/null 2>&1; git worktree remove --force "$tmp/b" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/a" "$rev_a"
git worktree add -q --detach "$tmp/b" "$rev_b"
for i in $(seq 1 "$rounds"); do
  for side in a b; do
    (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" "$py" "$script" "$@" 2>"$tmp/$side-$i.err" | tail -1 >"$tmp/$side-$i.json") \
      || { cat "$tmp/$side-$i.err" >&2; exit 1; }
  done
done
"$py" - "$tmp" "$rounds" "$rev_a" "$rev_b" <<'PY'
import json, statistics, sys
tmp, rounds, rev_a, rev_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(side):
    return [json.load(open(f"{tmp}/{side}-{i}.json")) for i in range(1, rounds + 1)]
a, b = load("a"), load("b")
for name, rev, runs in (("A", rev_a, a), ("B", rev_b, b)):
    print(f"{name} {rev}: host ms/step per round {[r['host'] for r in runs]}, median "
          f"{statistics.median(r['host'] for r in runs):.2f}; schedule {statistics.median(r['schedule'] for r in runs):.2f}, "
          f"model {statistics.median(r['model'] for r in runs):.2f}, logits {statistics.median(r['logits'] for r in runs):.2f}")
ha, hb = statistics.median(r["host"] for r in a), statistics.median(r["host"] for r in b)
print(f"host time B / A = {hb / ha:.3f} (per round: {[round(y['host'] / x['host'], 3) for x, y in zip(a, b)]})")
PY
