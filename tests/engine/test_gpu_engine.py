"""The engine on a CUDA GPU: bf16 logprobs close to HF's, fp32 greedy identical to HF with either attention
backend, and decode from CUDA graphs identical to eager decode. Skipped without CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from engine import LLM, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ARCHS = ["llama", "qwen2", "qwen3"]
BACKENDS = ["torch", "triton"]


def hf_last_logprobs(model_dir: str, prompts: list[list[int]], dtype: torch.dtype) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([p], device="cuda")).logits[0, -1].float(), -1).cpu()
                for p in prompts]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_first_token_logprobs_close_to_hf(arch, backend, tiny_model_dir, prompts_fn):
    prompts = prompts_fn(6, [1, 7, 16, 33, 100, 250], seed=11)
    expected = hf_last_logprobs(tiny_model_dir(arch), prompts, torch.bfloat16)
    llm = LLM(tiny_model_dir(arch), device="cuda", dtype="bfloat16", attention_backend=backend)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=1, logprobs=5))
    for out, ref in zip(outs, expected):
        lp = out.outputs[0].logprobs[0]
        # the chosen token is HF's argmax or within bf16 noise of it
        assert ref[lp.token_id] >= ref.max() - 0.1
        for token, value in lp.top.items():
            assert math.isclose(value, ref[token].item(), abs_tol=0.1), (token, value, ref[token].item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_greedy_on_cuda_matches_hf(arch, backend, tiny_model_dir, hf_greedy_fn, prompts_fn):
    prompts = prompts_fn(6, [1, 5, 16, 17, 60, 200], seed=12)
    expected = hf_greedy_fn(tiny_model_dir(arch), prompts, 12)  # HF on the CPU, fp32
    llm = LLM(tiny_model_dir(arch), device="cuda", dtype="float32", attention_backend=backend,
              max_num_batched_tokens=64)  # chunked prefill mixed with decode
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert [o.token_ids for o in outs] == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_graph_decode_equals_eager(arch, tiny_model_dir, prompts_fn):
    prompts = prompts_fn(13, [3, 9, 40, 130], seed=13)  # 13 sequences: replays pad to the 16-graph
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    eager = LLM(tiny_model_dir(arch), device="cuda", dtype="float32", enforce_eager=True).generate(prompts, params)
    llm = LLM(tiny_model_dir(arch), device="cuda", dtype="float32")
    assert llm.engine.runner.graphs is not None
    graphed = llm.generate(prompts, params)
    assert [o.token_ids for o in graphed] == [o.token_ids for o in eager]


def test_named_shape_with_dummy_weights_runs_on_gpu():
    llm = LLM(model_config="llama-3.2-1b", load_format="dummy", device="cuda", max_model_len=2048)
    outs = llm.generate([[1, 2, 3, 4]] * 4, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert all(len(o.token_ids) == 8 for o in outs)
    pool = llm.engine.kv.pool
    assert pool.num_free_blocks == pool.num_blocks
