#!/usr/bin/env bash
# Every GPU check in one call, inside a global deadline of 7 minutes, the headline figures first:
#   1. bench-8b   engine vs HF static batching, Llama-3.1-8B shape, 256 x 512 prompt -> 256 output tokens
#   2. bench-1b   the same on the Llama-3.2-1B shape
#   3. kernels    python -m kernels.bench --quick (attention vs copy bandwidth and SDPA, fused element-wise ops,
#                 the int4 GEMM vs bf16 weights at decode batch sizes)
#   4. gpu-tests  a bounded set of GPU tests (pytest -m gpu, Llama architecture only), every result listed
# then the summary table (scripts/gpu_summary.py), printed last even when stages fail or time out.
#
#   scripts/gpu_check.sh [OUT_DIR]     (default: $OUT, else results/gpu)
#   DRY_RUN=1 scripts/gpu_check.sh     print the stage plan and its time budget; run nothing
#
# Every stage runs under `timeout -k` (cut to what is left before the deadline, skipped when too little is) and
# tees its output to OUT_DIR/<stage>.log; its status line goes to OUT_DIR/stages.tsv when it ends; the
# benchmarks rewrite their JSON as results come in. OUT_DIR holds at most 8 files, all a device run brings
# back: stages.tsv (environment as '#' lines, then one row per stage), 4 logs, 3 JSON files.
# Random weights (--load-format dummy) with real shapes; --max-model-len 768 fits the 768-token requests, so
# CUDA graphs and split counts are sized for this workload, not the model's 131072-token window.
# Needs only torch, triton, transformers, safetensors, pytest and hypothesis (PYTHONPATH=., nothing installed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-results/gpu}}
PY=${PYTHON:-python3}
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-420}  # 7 minutes, for every stage and the summary together
SUMMARY_S=${GPU_CHECK_SUMMARY_S:-10}     # kept back for the summary
KILL_S=${GPU_CHECK_KILL_S:-5}            # grace between a stage's TERM and KILL
MIN_STAGE_S=${GPU_CHECK_MIN_STAGE_S:-5}  # a stage with less time than this left is skipped
ENV_S=10
MAX_MODEL_LEN=768  # 512 prompt + 256 output tokens
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

BENCH=("$PY" -m engine.cli bench --vs-hf --no-hf-cb --load-format dummy --num-prompts 256 --input-len 512
       --output-len 256 --hf-batch-size 64 --max-num-batched-tokens 8192 --max-model-len "$MAX_MODEL_LEN")
CMD_bench_8b=("${BENCH[@]}" --model-config llama-3.1-8b --json "$OUT_DIR/bench-8b.json")
CMD_bench_1b=("${BENCH[@]}" --model-config llama-3.2-1b --json "$OUT_DIR/bench-1b.json")
CMD_kernels=("$PY" -m kernels.bench --quick --json "$OUT_DIR/kernels.json")
CMD_gpu_tests=("$PY" -m pytest -m gpu tests/kernels/test_gpu_elementwise.py tests/kernels/test_gpu_int4.py
               tests/kernels/test_gpu.py
               tests/engine/test_gpu_engine.py
               -k "not qwen2 and not qwen3" -v -rA --durations=20 -p no:cacheprovider)
# stage name and planned timeout (s), in running order; the command is CMD_<name with - as _>
PLAN=("bench-8b 150" "bench-1b 80" "kernels 60" "gpu-tests 75")

START=$(date +%s)
status=0
elapsed() { echo $(( $(date +%s) - START )); }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT_DIR/stages.tsv"; }

dry_run() {
  local total=$(( ENV_S + KILL_S + SUMMARY_S )) entry name planned
  echo "stage env timeout ${ENV_S}s: nvidia-smi and package versions"
  for entry in "${PLAN[@]}"; do
    read -r name planned <<<"$entry"
    local -n cmd="CMD_${name//-/_}"
    echo "stage $name timeout ${planned}s: $(printf '%q ' "${cmd[@]}")"
    total=$(( total + planned + KILL_S ))
  done
  echo "stage summary timeout ${SUMMARY_S}s: $PY scripts/gpu_summary.py $OUT_DIR"
  echo "kill grace ${KILL_S}s per stage; env HF_HUB_OFFLINE=$HF_HUB_OFFLINE PYTHONPATH=$PYTHONPATH"
  echo "budget: ${total}s of ${DEADLINE_S}s"
  (( total <= DEADLINE_S ))
}

environment() {
  echo "=== environment ($(date +%T))"
  {
    echo "# started: $(date -u +%Y-%m-%dT%H:%M:%SZ), deadline ${DEADLINE_S}s, max_model_len $MAX_MODEL_LEN"
    (command -v nvidia-smi >/dev/null && timeout -k 2 "$ENV_S" nvidia-smi \
      --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available") \
      | sed 's/^/# gpu: /'
    timeout -k 2 "$ENV_S" "$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)" 2>&1 \
      | tail -1 | sed 's/^/# packages: /'
  } | tee -a "$OUT_DIR/stages.tsv"
  printf 'stage\tstatus\trc\tseconds\ttimeout\n' >> "$OUT_DIR/stages.tsv"
}

run_stage() {  # name planned_timeout: runs CMD_<name>, cut to the time left before the deadline
  local name=$1 planned=$2
  local -n cmd="CMD_${name//-/_}"
  local left=$(( DEADLINE_S - SUMMARY_S - KILL_S - $(elapsed) ))
  local t=$(( planned < left ? planned : left ))
  local log="$OUT_DIR/$name.log"
  if (( t < MIN_STAGE_S )); then
    echo "=== $name: skipped, ${left}s left before the deadline" | tee "$log"
    record "$name" skipped - 0 "$planned"
    status=1
    return
  fi
  echo
  echo "=== $name (timeout ${t}s, $(elapsed)s elapsed, $(date +%T)): $(printf '%q ' "${cmd[@]}")" | tee "$log"
  local t0 rc state
  t0=$(date +%s)
  timeout -k "$KILL_S" "$t" "${cmd[@]}" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) state=ok ;;
    124|137) state=timeout ;;
    *) state=failed ;;
  esac
  [ "$state" = ok ] || status=1
  record "$name" "$state" "$rc" "$(( $(date +%s) - t0 ))" "$t"
  echo "=== $name: $state (exit $rc) after $(( $(date +%s) - t0 ))s"
}

if [ "${DRY_RUN:-0}" = 1 ]; then
  dry_run
  exit $?
fi
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/stages.tsv"
environment
for entry in "${PLAN[@]}"; do
  read -r name planned <<<"$entry"
  run_stage "$name" "$planned"
done
echo
echo "=== summary ($(elapsed)s elapsed)"
timeout -k 2 "$(( SUMMARY_S - 2 ))" "$PY" scripts/gpu_summary.py "$OUT_DIR" || status=1
exit $status
