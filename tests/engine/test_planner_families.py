"""`kvserve plan` for the newer families: parameter counts equal transformers' own models (built on the meta
device) and the published figures; MoE active parameters and the experts a decode batch reads; the KV bound of
sliding-window layers."""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main
from engine.models.shapes import named_config
from engine.tools.capacity import GPU_PRESETS, Workload, count_params, plan_capacity, shape_from_hf_config

PUBLISHED = {"mixtral-8x7b": 46_702_792_704, "qwen3-30b-a3b": 30_532_122_624, "olmoe-1b-7b": 6_919_161_856,
             "mistral-7b": 7_241_732_096, "gemma-2-9b": 9_241_705_984, "gemma-3-1b": 999_885_952,
             "gemma-3-4b": 3_880_263_168, "phi-3-mini": 3_821_079_552, "qwen3-moe-mini": None}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_transformers_model(name):
    from transformers import AutoModelForCausalLM

    cfg = named_config(name)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in hf.parameters())
    if PUBLISHED[name] is not None:
        assert count_params(cfg).total == PUBLISHED[name]


def test_mixtral_active_parameters_by_hand():
    shape = shape_from_hf_config(named_config("mixtral-8x7b"), "mixtral-8x7b")
    expert = 3 * 4096 * 14336
    assert shape.breakdown.experts == 32 * 8 * expert
    assert shape.breakdown.active_experts == 32 * 2 * expert
    assert shape.active_params == 46_702_792_704 - 32 * 6 * expert == 12_879_925_248  # "12.9B active"
    assert (shape.num_experts, shape.experts_per_token) == (8, 2)


def test_qwen3_30b_a3b_decode_reads_only_the_experts_its_batch_touches():
    shape = shape_from_hf_config(named_config("qwen3-30b-a3b"), "qwen3-30b-a3b")
    assert shape.active_params == 3_353_032_704  # "3.3B activated"
    experts = shape.breakdown.experts
    one = plan_capacity(shape, GPU_PRESETS["H100"], Workload(batch_size=1, context_len=1024))
    assert one.experts_touched == pytest.approx(8 / 128)
    assert one.decode_weight_bytes == pytest.approx((shape.num_params - experts + experts / 16) * 2, abs=2)
    big = plan_capacity(shape, GPU_PRESETS["H100"], Workload(batch_size=256, context_len=1024))
    assert big.experts_touched == pytest.approx(1 - (120 / 128) ** 256)
    assert big.decode_weight_bytes > 0.99 * big.weight_bytes
    # compute follows the active parameters, not the total (+ the sampled row's logits, + attention)
    assert one.decode_step_flops == pytest.approx(2 * shape.dense_params + 2 * 151936 * 2048
                                                  + 4 * 32 * 128 * 48 * 1024)
    assert shape.dense_params == shape.active_params - 2 * 151936 * 2048


def test_mistral_window_bounds_the_kv_of_a_long_sequence():
    shape = shape_from_hf_config(named_config("mistral-7b"), "mistral-7b")
    assert shape.layer_windows == (4096,) * 32
    layer_token = 2 * 8 * 128 * 2
    long = plan_capacity(shape, GPU_PRESETS["H100"], Workload(context_len=32768))
    assert long.kv_bytes_per_sequence == 32 * 4096 * layer_token == 536_870_912
    assert long.blocks_per_sequence == 257  # ceil(4095 / 16) + 1 blocks in every layer
    short = plan_capacity(shape, GPU_PRESETS["H100"], Workload(context_len=2048))
    assert short.kv_bytes_per_sequence == 32 * 2048 * layer_token and short.blocks_per_sequence == 128


def test_gemma3_holds_global_layers_whole_and_local_layers_windowed():
    shape = shape_from_hf_config(named_config("gemma-3-4b"), "gemma-3-4b")
    assert sum(w is None for w in shape.layer_windows) == 5 and set(shape.layer_windows) == {None, 1024}
    p = plan_capacity(shape, GPU_PRESETS["H100"], Workload(context_len=32768, prompt_len=2048))
    layer_token = 2 * 4 * 256 * 2
    assert p.kv_bytes_per_sequence == layer_token * (5 * 32768 + 29 * 1024)
    # prefill attention: full layers n(n+1)/2 pairs, window layers W(W+1)/2 + (n - W) W
    pairs = 5 * 2048 * 2049 // 2 + 29 * (1024 * 1025 // 2 + 1024 * 1024)
    assert p.prefill_attention_flops == 4 * 8 * 256 * pairs


def test_cli_shows_the_moe_and_window_lines(capsys):
    assert main(["plan", "--model-config", "qwen3-30b-a3b", "--gpu", "H200", "--context-len", "4096"]) == 0
    out = capsys.readouterr().out
    assert "128 experts per layer, 8 per token: 3,353,032,704 of 30,532,122,624 params active per token" in out
    assert "experts touched" in out
    assert main(["plan", "--model-config", "gemma-3-4b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["layer_windows"].count(1024) == 29
