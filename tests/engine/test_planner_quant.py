"""`kvserve plan` and the server agree on what fits: for a KV budget, the planner's block count equals the
block count the CPU engine actually allocates, for fp32, an int8 / fp8 KV cache (codes plus one fp32 scale
per token and KV head) and int8 / int4 / w8a8 weights (whose saved bytes the CPU server adds to the cache)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from engine import LLM
from engine.cli import main
from engine.models.shapes import named_config
from engine.tools.capacity import GPU_PRESETS, Workload, kv_bytes_per_token, plan_capacity, shape_from_hf_config

BUDGET_GB = 0.01
# (architecture, quantization, kv_cache_dtype); qwen2 (projection biases, unquantized) checks the weight bytes
CASES = [("llama", None, "auto"), ("llama", None, "int8"), ("llama", "int8", "auto"), ("llama", "int8", "int8"),
         ("llama", "int4", "fp8_e4m3"), ("qwen2", "int8", "auto"), ("qwen2", "int4", "auto"), ("llama", "int4-fp-head", "auto"),
         ("llama", "w8a8", "int8"), ("qwen2", "w8a8", "auto")]


@pytest.mark.parametrize("arch, quantization, kv", CASES)
def test_planner_block_count_equals_the_cpu_engines(arch, quantization, kv, tiny_model_dir, capsys):
    path = tiny_model_dir(arch)
    head = quantization != "int4-fp-head"  # the server's --quantize-lm-head (default on) / --no-quantize-lm-head
    quantization = "int4" if not head else quantization
    llm = LLM(path, device="cpu", cpu_kv_cache_gb=BUDGET_GB, quantization=quantization, kv_cache_dtype=kv,
              quantize_lm_head=head)
    runner = llm.engine.runner
    kv_name = "fp32" if kv == "auto" else kv
    argv = ["plan", "--model", path, "--dtype", "fp32", "--kv-dtype", kv_name, "--cpu-kv-cache-gb", str(BUDGET_GB),
            "--json"] + ([] if quantization is None else ["--quantization", quantization]) + \
        ([] if head else ["--no-quantize-lm-head"])
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["kv_bytes_per_token"] == runner.config.model.kv_bytes_per_token
    assert plan["num_blocks"] == runner.num_kv_blocks


def test_8bit_kv_bytes_count_the_scales():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64: 2 x 30 x 3 x (64 + 4) = 12,240 B/token (fp32: 46,080)
    assert kv_bytes_per_token(30, 3, 64, 1) == 12_240
    assert kv_bytes_per_token(30, 3, 64, 4) == 46_080
    shape = shape_from_hf_config(named_config("llama-3.1-8b"), "llama-3.1-8b")
    fp8 = plan_capacity(shape, GPU_PRESETS["H100"], Workload("bf16", "fp8"))
    assert fp8.kv_bytes_per_token == 2 * 32 * 8 * (128 + 4)


def test_int4_weights_keep_the_embedding_and_count_scales_and_zeros(tiny_model_dir):
    shape = shape_from_hf_config(AutoConfig.from_pretrained(tiny_model_dir("llama")), "tiny")
    fp32 = plan_capacity(shape, GPU_PRESETS["H100"], Workload("fp32", "fp32"))
    int4 = plan_capacity(shape, GPU_PRESETS["H100"], Workload("fp32", "fp32", quantization="int4"))
    assert int4.weight_bytes > fp32.weight_bytes / 8  # not every parameter is 4-bit
    with pytest.raises(ValueError, match="^quantization_group_size: only applies"):
        Workload("fp32", "fp32", quantization="int8", group_size=32)
    with pytest.raises(ValueError, match="^dtype: with quantization"):
        Workload("int8", "fp32", quantization="int8")


def test_the_engines_step_cost_moves_the_8bit_caches_bytes(tiny_model_dir):
    from engine.config import EngineArgs
    from engine.step_cost import model_cost

    for kv, per_token in (("auto", 512), ("int8", 160)):  # 2 layers x 2 KV heads x 2 x (16 x 4) or (16 + 4)
        config = EngineArgs(model=tiny_model_dir("llama"), device="cpu", kv_cache_dtype=kv).resolve()
        assert model_cost(config.model).kv_bytes_per_token == per_token

