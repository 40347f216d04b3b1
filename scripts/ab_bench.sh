#!/usr/bin/env bash
# Before/after throughput of two revisions of kvserve, side by side on one machine:
#   scripts/ab_bench.sh REV_A REV_B ROUNDS [kvserve bench arguments...]
# Each revision is checked out into a temporary worktree and run with this checkout's .venv (PYTHONPATH
# points at the worktree, so its own engine/ and kernels/ are imported). Runs alternate A, B, A, B, ... so
# that drift on a noisy machine hits both alike; the last line prints each side's median output tok/s and
# the ratio B / A. With AB_CPU_TIME=1 each run goes through this checkout's scripts/bench_cpu_time.py, and
# output tokens per CPU-second of the engine's thread are compared too (steadier on a busy machine; pass
# --cpu-threads 1 so that every op runs on that thread).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 REV_A REV_B ROUNDS [bench args...]" >&2; exit 2; }
rev_a=$1 rev_b=$2 rounds=$3; shift 3
py=${PYTHON:-$PWD/.venv/bin/python}
if [ "${AB_CPU_TIME:-0}" = 1 ]; then bench=("$PWD/scripts/bench_cpu_time.py"); else bench=(-m engine.cli bench); fi
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/a" >/dev/null 2>&1; git worktree remove --force "$tmp/b" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/a" "$rev_a"
git worktree add -q --detach "$tmp/b" "$rev_b"
for i in $(seq 1 "$rounds"); do
  for side in a b; do
    (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" "$py" "${bench[@]}" --json "$tmp/$side-$i.json" "$@" \
      >"$tmp/$side-$i.log" 2>&1) || { cat "$tmp/$side-$i.log" >&2; exit 1; }
  done
done
"$py" - "$tmp" "$rounds" "$rev_a" "$rev_b" <<'PY'
import json, statistics, sys
tmp, rounds, rev_a, rev_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def tok_s(side):
    out = []
    for i in range(1, rounds + 1):
        data = json.load(open(f"{tmp}/{side}-{i}.json"))
        out.append(data["engine_output_tok_s"])
    return out
a, b = tok_s("a"), tok_s("b")
print(f"A {rev_a}: output tok/s per round {[round(x, 1) for x in a]}, median {statistics.median(a):.1f}")
print(f"B {rev_b}: output tok/s per round {[round(x, 1) for x in b]}, median {statistics.median(b):.1f}")
print(f"B / A = {statistics.median(b) / statistics.median(a):.3f} (per round: "
      f"{[round(y / x, 3) for x, y in zip(a, b)]})")
def cpu(side):
    return [json.load(open(f"{tmp}/{side}-{i}.json"))["engine"].get("output_tok_per_cpu_s")
            for i in range(1, rounds + 1)]
ca, cb = cpu("a"), cpu("b")
if None not in ca + cb:
    print(f"per CPU-second of the engine thread: A median {statistics.median(ca):.1f}, B median "
          f"{statistics.median(cb):.1f}, B / A = {statistics.median(cb) / statistics.median(ca):.3f} "
          f"(per round: {[round(y / x, 3) for x, y in zip(ca, cb)]})")
PY
