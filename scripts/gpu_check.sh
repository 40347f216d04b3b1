#!/usr/bin/env bash
# Every GPU check in one go (sized for ~8 minutes on an H200): the GPU-marked tests, the kernel benchmark,
# and the engine against HF transformers on Llama-3.2-1B and Llama-3.1-8B shapes with random weights.
# Needs only torch, triton, transformers, safetensors, pytest and hypothesis (no install: PYTHONPATH=.).
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else results/gpu)
#
# Writes OUT_DIR/{gpu-tests.log,kernels.json,bench-1b.json,bench-8b.json,summary.json} and prints a short
# table last. HF continuous batching is skipped here to fit the time box (its baseline is in
# shared/guide/gpu.md); pass HF_CB=1 to include it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-results/gpu}}
mkdir -p "$OUT_DIR"
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
CB_FLAG=$([ "${HF_CB:-0}" = 1 ] && echo "" || echo "--no-hf-cb")
status=0

step() { echo; echo "=== $1 ($(date +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"

step "GPU tests"
timeout 200 $PY -m pytest -q -m gpu tests/kernels tests/engine -p no:cacheprovider -x 2>&1 | tee "$OUT_DIR/gpu-tests.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "kernel benchmark"
timeout 150 $PY -m kernels.bench --json "$OUT_DIR/kernels.json" || status=1

step "engine vs HF, llama-3.2-1b shape (64 x 512 in x 128 out)"
timeout 120 $PY -m engine.cli bench --vs-hf --no-hf-cb --model-config llama-3.2-1b --load-format dummy \
  --num-prompts 64 --input-len 512 --output-len 128 --hf-batch-size 64 --max-num-batched-tokens 8192 \
  --json "$OUT_DIR/bench-1b.json" || status=1

step "engine vs HF, llama-3.1-8b shape (256 x 512 in x 256 out)"
timeout 240 $PY -m engine.cli bench --vs-hf $CB_FLAG --model-config llama-3.1-8b --load-format dummy \
  --num-prompts 256 --input-len 512 --output-len 256 --hf-batch-size 64 --max-num-batched-tokens 8192 \
  --json "$OUT_DIR/bench-8b.json" || status=1

step "summary"
$PY scripts/gpu_summary.py "$OUT_DIR" || status=1
exit $status
