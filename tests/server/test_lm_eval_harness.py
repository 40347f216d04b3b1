"""lm-evaluation-harness (`lm_eval`, the optional `eval` extra) as a real client of a real server.

lm_eval's `local-completions` model scores the shipped multiple-choice task (evals/lm_eval_tasks/kvserve_mc)
against a live kvserve on the tiny model: batches of token-id prompts with `echo: true, logprobs: 1,
max_tokens: 1`. Its accuracy must equal the one computed offline from the engine's own prompt logprobs
(`scripts/eval_lm.py: offline_accuracy`, the same choices scored the same way). Skipped when lm_eval cannot
be imported (`pip install -e '.[eval]'`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

if any(importlib.util.find_spec(m) is None for m in ("lm_eval", "tenacity", "aiohttp")):
    pytest.skip("lm_eval with its API-model packages is not installed (it is the optional `eval` extra: "
                "pip install -e '.[eval]')", allow_module_level=True)


def load_script():
    spec = importlib.util.spec_from_file_location("eval_lm", ROOT / "scripts" / "eval_lm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_lm"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def open_server(live_server, tiny_llama_dir):
    """lm_eval's local-completions model sends no API key: a server without one."""
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir), api_key=None).start()
    yield live
    live.stop()


def test_lm_eval_accuracy_equals_the_engines_own_prompt_logprob_scoring(open_server, offline_llm, tiny_llama_dir,
                                                                        tmp_path):
    eval_lm = load_script()
    name = httpx.get(f"{open_server.url}/v1/models").json()["data"][0]["id"]
    acc = eval_lm.run_lm_eval(open_server.url, name, str(tiny_llama_dir), str(tmp_path))
    docs = eval_lm.load_docs()
    offline = eval_lm.offline_scores(offline_llm, docs)
    assert acc == eval_lm.accuracy(offline, docs)
    # and choice by choice: the log-likelihoods lm_eval summed from the echoed logprobs are the engine's
    served = eval_lm.lm_eval_scores(str(tmp_path))
    assert len(served) == len(docs) and [len(s) for s in served] == [len(d["choices"]) for d in docs]
    for got, want in zip(served, offline):
        assert got == pytest.approx(want, abs=1e-3)
