"""Pre-quantized int4 checkpoints (AWQ, GPTQ v1/v2, compressed-tensors pack-quantized; grouped, per-channel,
symmetric or not) load by themselves into the int4 path: every projection's weights equal the checkpoint's
dequantized (q - z) * s bit for bit, and the engine's greedy tokens equal HF transformers' greedy tokens on a
model holding those dequantized weights in fp32. The checkpoints are made by hand (prepacked_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from engine.quantization.int4 import Int4Linear
from tests.engine.prepacked_helpers import CHECKPOINTS, checkpoint

METHODS = {"awq": "awq", "gptq": "gptq", "ct": "compressed-tensors"}


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_a_prequantized_checkpoint_runs_its_dequantized_weights_and_matches_hf(name, tiny_model_dir, tmp_path,
                                                                               hf_greedy_fn, prompts_fn):
    from safetensors.torch import load_file

    from engine import LLM, SamplingParams

    qdir, ref_dir = checkpoint(name, tiny_model_dir("llama"), tmp_path)
    llm = LLM(qdir, device="cpu")
    quant = llm.engine.runner.config.model.quantization
    assert quant.method == METHODS[name.split("-")[0]]
    assert quant.group_size == (64 if CHECKPOINTS[name][2] is None else CHECKPOINTS[name][2])  # per channel: 64
    reference = load_file(f"{ref_dir}/model.safetensors")
    layers = {n: m for n, m in llm.engine.runner.model.named_modules() if isinstance(m, Int4Linear)}
    assert len(layers) == 4 * 2  # every projection of the tiny model's 2 layers
    for i in range(2):
        dense = {"qkv_proj": ("self_attn", "q_proj", "k_proj", "v_proj"), "o_proj": ("self_attn", "o_proj"),
                 "gate_up_proj": ("mlp", "gate_proj", "up_proj"), "down_proj": ("mlp", "down_proj")}
        for fused, (block, *parts) in dense.items():
            expected = torch.cat([reference[f"model.layers.{i}.{block}.{p}.weight"] for p in parts])
            assert torch.equal(layers[f"layers.{i}.{block}.{fused}"]._dequantized_cpu(torch.float32), expected)
    prompts = prompts_fn(3, [5, 9, 13])
    out = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in out] == hf_greedy_fn(ref_dir, prompts, 8)


@pytest.mark.parametrize("name", ["awq-g32", "gptq-v1-sym-g32", "ct-asym-channel"])
def test_another_quantization_on_a_prequantized_checkpoint_is_refused(name, tiny_model_dir, tmp_path):
    from engine.config import EngineArgs

    qdir, _ = checkpoint(name, tiny_model_dir("llama"), tmp_path)
    label = {"awq": "AWQ", "gptq": "GPTQ", "ct": "compressed-tensors"}[name.split("-")[0]]
    with pytest.raises(ValueError, match=f"^quantization: the checkpoint is already {label}-quantized"):
        EngineArgs(model=qdir, device="cpu", quantization="int8").resolve()
    with pytest.raises(ValueError, match=f"^quantization: {label} checkpoints are not supported with "
                                         "tensor_parallel_size > 1"):
        EngineArgs(model=qdir, device="cpu", tensor_parallel_size=2).resolve()
    method = METHODS[name.split("-")[0]]
    assert EngineArgs(model=qdir, device="cpu", quantization=method).resolve().model.quantization.method == method


@pytest.mark.parametrize("method", ["gptq", "compressed-tensors"])
def test_a_prequantized_format_on_a_plain_checkpoint_is_refused(method, tiny_model_dir):
    from engine.config import EngineArgs

    with pytest.raises(ValueError, match=f"^quantization: '{method}' needs a checkpoint whose config declares"):
        EngineArgs(model=tiny_model_dir("llama"), device="cpu", quantization=method).resolve()


@pytest.mark.parametrize("name", ["awq-g32", "gptq-v2-asym-per-channel", "ct-sym-g32-bf16"])
def test_sizing_and_the_planner_count_the_checkpoints_int4_as_the_engine_holds_it(name, tiny_model_dir, tmp_path,
                                                                                 capsys):
    import json

    from engine import LLM
    from engine.cli import main
    from engine.quantization.sizing import bytes_saved

    qdir, _ = checkpoint(name, tiny_model_dir("llama"), tmp_path)
    llm = LLM(qdir, device="cpu", cpu_kv_cache_gb=0.01)
    runner = llm.engine.runner
    assert runner.weight_report.bytes_saved == bytes_saved(runner.config.model, runner.config.model.quantization) > 0
    assert main(["plan", "--model", qdir, "--dtype", "fp32", "--kv-dtype", "fp32", "--cpu-kv-cache-gb", "0.01",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["num_blocks"] == runner.num_kv_blocks
    # the checkpoint's groups are its own, for the planner as for the server
    assert main(["plan", "--model", qdir, "--quantization-group-size", "32"]) == 2
    assert "quantization_group_size: only applies with quantization='int4'" in capsys.readouterr().err
