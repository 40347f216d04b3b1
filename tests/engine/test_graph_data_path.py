"""The CUDA-graph decode data path, on the CPU: everything but the graph itself.

`DecodeGraphs` needs CUDA to capture. Here its capture is replaced by replays that run the model eagerly
over the same static buffers and metadata (fixed split count), with the Triton kernels under the
interpreter, so the rest of the path runs for real: which steps use a graph, the padded arrays staged with
the step, the device-to-device copies into the static buffers, the split tier chosen from the actual context,
and the slicing of the padded output. Tokens must equal the eager Triton path's and HF's.
"""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.worker.cuda_graphs import DecodeGraphs

pytestmark = pytest.mark.slow


class EagerReplay:
    def __init__(self, graphs: "InterpretedGraphs", key: tuple[int, int]):
        self.graphs, self.key = graphs, key

    def replay(self) -> None:
        g, (b, splits) = self.graphs, self.key
        g.outputs[self.key] = g.model(g.input_ids[:b], g.positions[:b], g._meta(b, splits), g.backend)


class InterpretedGraphs(DecodeGraphs):
    """DecodeGraphs whose 'graphs' run the model eagerly over the static buffers."""

    def _capture(self) -> None:
        for b in self.sizes:
            for splits in self.tiers[b]:
                self.graphs[(b, splits)] = EagerReplay(self, (b, splits))


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (see tests/conftest.py)."""


def test_the_graph_decode_path_gives_the_eager_tokens(tiny_model_dir, hf_greedy_fn, prompts_fn):
    prompts = prompts_fn(5, [3, 9, 17, 25, 33], seed=13)  # 5 sequences: replays pad to the 8-graph
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    kwargs = dict(device="cpu", dtype="float32", attention_backend="triton", max_num_seqs=8, max_model_len=64)
    eager = LLM(tiny_model_dir("llama"), **kwargs).generate(prompts, params)
    llm = LLM(tiny_model_dir("llama"), async_scheduling=True, **kwargs)
    runner = llm.engine.runner
    runner.graphs = InterpretedGraphs(runner.model, runner.backend, llm.engine.config)
    graphed = llm.generate(prompts, params)
    assert [o.token_ids for o in graphed] == [o.token_ids for o in eager]
    assert [o.token_ids for o in graphed] == hf_greedy_fn(tiny_model_dir("llama"), prompts, 6)
    replays = runner.graphs.replays
    assert sum(replays.values()) >= 5 and {b for b, _ in replays} >= {8}, replays  # decode steps of 5 -> 8
