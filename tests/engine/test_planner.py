"""The capacity planner: exact bytes for known models, the roofline arithmetic, JSON output and the CLI."""

import json
import math
import subprocess
import sys

import pytest

from engine.tools.capacity import (GIB, GPU_PRESETS, Hardware, ModelShape, Workload, count_params, plan_capacity,
                             shape_from_hf_config)
from engine.cli import main
from engine.models.shapes import NAMED_SHAPES, named_config

JSON_KEYS = ("weight_bytes", "kv_bytes_per_token", "kv_bytes_per_sequence", "max_concurrent_sequences",
             "decode_step_lower_bound_s")


def llama_7b() -> ModelShape:
    return shape_from_hf_config(named_config("llama-7b"), "llama-7b")


def plan_json(capsys, *argv) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---- the classic example ------------------------------------------------------------------------------
def test_llama_7b_fp16_needs_exactly_one_gib_of_kv_per_2048_token_sequence():
    p = plan_capacity(llama_7b(), GPU_PRESETS["RTX-4090"], Workload("fp16", "fp16", context_len=2048))
    assert p.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524_288
    assert p.kv_bytes_per_sequence == 1_073_741_824
    assert llama_7b().num_params == 6_738_415_616
    assert p.weight_bytes == 13_476_831_232  # ~13.5 GB


def test_a_24_gib_gpu_with_llama_7b_fp16_weights_serves_only_a_handful_of_2048_token_sequences():
    p = plan_capacity(llama_7b(), GPU_PRESETS["RTX-4090"], Workload("fp16", "fp16", context_len=2048))
    usable = math.floor(24 * GIB * 0.9)
    assert p.usable_memory_bytes == usable == 23_192_823_398
    assert p.kv_budget_bytes == usable - 13_476_831_232
    assert p.num_blocks == p.kv_budget_bytes // (16 * 524_288) == 1158
    assert p.blocks_per_sequence == 128
    assert p.max_concurrent_sequences == 9


def test_the_planner_explains_a_tight_fit(capsys):
    assert main(["plan", "--model-config", "llama-7b", "--dtype", "fp16", "--gpu", "RTX-4090"]) == 0
    out = capsys.readouterr().out
    assert "1,073,741,824 B (1.07 GB)" in out
    assert "13,476,831,232 B (13.48 GB)" in out
    assert "Why only 9 sequence(s) of 2048 tokens?" in out
    assert "2 x 32 x 32 x 128 x 2 = 524,288 B" in out


def test_a_roomy_fit_needs_no_explanation(capsys):
    assert main(["plan", "--model-config", "smollm2-135m", "--gpu", "H200"]) == 0
    assert "Why only" not in capsys.readouterr().out


# ---- the default model ---------------------------------------------------------------------------------
def test_smollm2_135m_parameters_by_hand():
    h, inter, vocab, layers = 576, 1536, 49152, 30
    attention = h * 9 * 64 + 2 * h * 3 * 64 + 9 * 64 * h  # q, k, v, o
    by_hand = vocab * h + layers * (attention + 3 * h * inter + 2 * h) + h  # tied: no lm_head
    assert by_hand == 134_515_008
    b = count_params(named_config("smollm2-135m"))
    assert b.total == by_hand and b.lm_head == 0 and b.embedding == vocab * h


@pytest.mark.slow  # reads the default model's config (a GGUF file, converted once and cached)
def test_the_default_model_is_smollm2_135m_with_its_kv_bytes_by_hand(capsys):
    data = plan_json(capsys, "--context-len", "8192", "--dtype", "bf16")
    assert data["model"]["num_params"] == 134_515_008
    assert (data["model"]["num_layers"], data["model"]["num_kv_heads"], data["model"]["head_dim"]) == (30, 3, 64)
    assert data["kv_bytes_per_token"] == 2 * 30 * 3 * 64 * 2 == 23_040
    assert data["kv_bytes_per_sequence"] == 23_040 * 8192
    assert data["weight_bytes"] == 134_515_008 * 2


# ---- the arithmetic -----------------------------------------------------------------------------------
def test_decode_roofline_reads_weights_plus_the_batch_kv_once_per_step():
    shape = ModelShape("toy", num_layers=2, num_kv_heads=2, head_dim=4, num_params=1000)
    gpu = Hardware("toy", memory_bytes=10_000_000, bandwidth=1e6, flops=1e12)
    p = plan_capacity(shape, gpu, Workload("fp16", "fp16", memory_fraction=1.0, context_len=100, block_size=16, batch_size=3))
    assert p.kv_bytes_per_token == 2 * 2 * 2 * 4 * 2 == 64
    assert p.decode_step_bytes == 2000 + 3 * 100 * 64
    assert p.decode_step_lower_bound_s == pytest.approx(21_200 / 1e6)
    assert p.max_output_tokens_per_s == pytest.approx(3 / (21_200 / 1e6))
    assert p.blocks_per_sequence == 7  # ceil(100 / 16)
    assert p.num_blocks == (10_000_000 - 2000) // (16 * 64)
    # no query heads known: prefill is 2 x params x n only; TTFT is the larger of compute and of reading the
    # weights and writing the prompt's K/V
    assert p.prefill_flops == 2 * 1000 * 100
    assert p.prefill_bytes == 2000 + 100 * 64
    assert p.ttft_lower_bound_s == max(2e5 / 1e12, (2000 + 100 * 64) / 1e6)


def test_prefill_flops_add_the_causal_attention_term():
    shape = llama_7b()
    p = plan_capacity(shape, GPU_PRESETS["H100"], Workload("bf16", prompt_len=1000))
    dense = 2 * (6_738_415_616 - 131_072_000 - 131_072_000) * 1000 + 2 * 32000 * 4096
    attention = 2 * 32 * 32 * 128 * 1000 * 1001
    assert p.prefill_dense_flops == dense and p.prefill_attention_flops == attention
    assert p.prefill_compute_s == pytest.approx((dense + attention) / 989e12)


def test_fp8_kv_halves_the_bytes_plus_its_scales():
    # one fp32 scale per token and KV head beside 128 one-byte elements: 132 / 256 of the fp16 bytes
    a = plan_capacity(llama_7b(), GPU_PRESETS["A100-80GB"], Workload("fp16", "fp16"))
    b = plan_capacity(llama_7b(), GPU_PRESETS["A100-80GB"], Workload("fp16", "fp8"))
    assert b.kv_bytes_per_token * 256 == a.kv_bytes_per_token * 132
    assert b.num_blocks == a.kv_budget_bytes // (16 * b.kv_bytes_per_token) > 1.9 * a.num_blocks


def test_weights_that_do_not_fit_leave_no_kv_cache(capsys):
    data = plan_json(capsys, "--model-config", "llama-3.1-8b", "--dtype", "fp32", "--gpu", "L4")
    assert data["weights_fit"] is False and data["num_blocks"] == 0 and data["max_concurrent_sequences"] == 0
    assert main(["plan", "--model-config", "llama-3.1-8b", "--dtype", "fp32", "--gpu", "L4"]) == 0
    assert "exceed the usable" in capsys.readouterr().out


@pytest.mark.parametrize("name,params", [
    ("llama-3.2-1b", 1_235_814_400), ("llama-3.1-8b", 8_030_261_248), ("qwen3-0.6b", 596_049_920),
    ("llama-7b", 6_738_415_616), ("smollm2-135m", 134_515_008),
])
def test_named_shapes_have_their_published_parameter_counts(name, params):
    assert name in NAMED_SHAPES
    assert shape_from_hf_config(named_config(name), name).num_params == params


# ---- the CLI ------------------------------------------------------------------------------------------
def test_json_output_has_the_documented_keys(capsys):
    data = plan_json(capsys, "--model-config", "llama-3.1-8b", "--gpu", "H200", "--context-len", "4096")
    for key in JSON_KEYS:
        assert key in data
    assert data["kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2  # 128 KiB
    assert data["gpu"]["memory_bytes"] == 141 * GIB and data["workload"]["kv_dtype"] == "bf16"


def test_a_custom_gpu_overrides_the_preset(capsys):
    data = plan_json(capsys, "--model-config", "llama-7b", "--dtype", "fp16", "--gpu-memory", "48",
                     "--bandwidth", "1", "--flops", "100", "--memory-fraction", "1.0")
    assert data["gpu"]["memory_bytes"] == 48 * GIB and data["gpu"]["bandwidth"] == 1e12 and data["gpu"]["flops"] == 1e14
    assert data["max_concurrent_sequences"] == (48 * GIB - 13_476_831_232) // (16 * 524_288) // 128
    step = 13_476_831_232 + data["batch_size"] * 2048 * 524_288
    assert data["decode_step_lower_bound_s"] == pytest.approx(step / 1e12)


def test_an_explicit_shape_needs_no_config(capsys):
    data = plan_json(capsys, "--num-layers", "32", "--num-kv-heads", "32", "--head-dim", "128", "--num-params", "6.7e9",
                     "--dtype", "fp16")
    assert data["kv_bytes_per_sequence"] == 1_073_741_824 and data["weight_bytes"] == 13_400_000_000


@pytest.mark.parametrize("argv,message", [
    (["--model-config", "llama-7b", "--num-layers", "2"], "give one of"),
    (["--num-layers", "2"], "need all of"),
    (["--model-config", "nope"], "unknown shape"),
    (["--model-config", "llama-7b", "--kv-dtype", "int4"], "kv_dtype"),
    (["--model-config", "llama-7b", "--memory-fraction", "1.5"], "memory_fraction"),
])
def test_bad_arguments_exit_2_with_the_parameter_named(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_planner_imports_without_torch_or_transformers():
    code = "import sys, engine.tools.planner; sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- memory with units -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected,says", [
    ("24GiB", 24 * GIB, "binary GiB"),
    ("24GB", 24_000_000_000, "decimal GB"),
    ("80G", 80 * GIB, "no unit given"),
    ("80", 80 * GIB, "no unit given"),
    ("0.5TiB", 512 * GIB, "binary TiB"),
    ("512 MB", 512_000_000, "decimal MB"),
    ("141gib", 141 * GIB, "binary GiB"),
])
def test_gpu_memory_takes_units_and_the_plan_says_how_it_read_them(capsys, text, expected, says):
    data = plan_json(capsys, "--model-config", "smollm2-135m", "--gpu-memory", text)
    assert data["gpu"]["memory_bytes"] == expected
    assert says in data["gpu_memory_read_as"] and f"{expected:,} B" in data["gpu_memory_read_as"]
    assert main(["plan", "--model-config", "smollm2-135m", "--gpu-memory", text]) == 0
    assert f"--gpu-memory {text.strip()} read as" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["24XB", "GB", "-1GB", "24iB", "0"])
def test_a_bad_gpu_memory_is_refused_naming_the_parameter(capsys, text):
    assert main(["plan", "--model-config", "smollm2-135m", f"--gpu-memory={text}"]) == 2
    assert "gpu_memory" in capsys.readouterr().err


def test_decode_flops_include_the_lm_head_of_every_sampled_row():
    shape = llama_7b()
    p = plan_capacity(shape, GPU_PRESETS["H100"], Workload("bf16", context_len=1000, batch_size=4))
    per_seq = 2 * (6_738_415_616 - 2 * 131_072_000) + 2 * 32000 * 4096 + 4 * 32 * 32 * 128 * 1000
    assert p.decode_step_flops == 4 * per_seq
