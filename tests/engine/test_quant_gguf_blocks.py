"""GGUF Q4_0 / Q4_1 blocks map code for code onto the grouped int4 format (group 32): dequantizing the mapped
codes, scales and zeros gives gguf's own dequantization bit for bit, and the CPU int4 kernel built from them
computes the same products as a linear layer over gguf's dequantized weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.quantization.gguf_blocks import Q4_0, Q4_1, inexact_zeros, int4_from_q4_blocks
from engine.quantization.int4 import Int4Linear, dequantize_int4

gguf = pytest.importorskip("gguf")


def quantized(qtype: int, n=64, k=256, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 0.2, (n, 1)) + rng.uniform(-0.05, 0.05, (n, 1)))
    w = w.astype(np.float32)
    t = gguf.GGMLQuantizationType(qtype)
    raw = gguf.quants.quantize(w, t)
    return torch.from_numpy(raw), torch.from_numpy(gguf.quants.dequantize(raw, t).astype(np.float32))


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1], ids=["Q4_0", "Q4_1"])
def test_mapped_codes_dequantize_to_ggufs_values_bit_for_bit(qtype):
    raw, expected = quantized(qtype)
    codes, scale, zero = int4_from_q4_blocks(raw, qtype)
    assert codes.shape == expected.shape and int(codes.min()) >= 0 and int(codes.max()) <= 15
    assert inexact_zeros(raw, qtype) == 0
    assert torch.equal(dequantize_int4(codes, scale, zero, 32), expected)


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1], ids=["Q4_0", "Q4_1"])
def test_the_cpu_int4_kernel_over_gguf_blocks_matches_a_linear_over_the_dequantized_weights(qtype):
    raw, w = quantized(qtype, seed=1)
    layer = Int4Linear.from_codes(*int4_from_q4_blocks(raw, qtype), group_size=32, bias=None,
                                  dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(layer._dequantized_cpu(torch.float32), w)  # the packed codes are the blocks' codes
    x = torch.randn(2, w.shape[1])
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-4, atol=1e-4)  # the kernel's path (2 rows)
    x = torch.randn(9, w.shape[1])
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-5, atol=1e-5)  # the dequantize + GEMM path


def test_other_types_are_refused_naming_quantization():
    with pytest.raises(ValueError, match="^quantization: GGUF type 8"):
        int4_from_q4_blocks(torch.zeros(1, 34, dtype=torch.uint8), 8)


@pytest.fixture(scope="module")
def default_models():
    from engine import LLM

    base = LLM(device="cpu", max_model_len=256)
    q4 = LLM(device="cpu", max_model_len=256, quantization="gguf")
    return base, q4


@pytest.mark.slow
def test_the_default_model_runs_from_its_own_q4_1_blocks(default_models):
    """SmolLM2's file stores every projection as Q4_1: with quantization='gguf' each projection is an int4
    layer whose weights equal the fp32 conversion's bit for bit (q/k rows unpermuted, q/k/v and gate/up
    stacked), and greedy decoding follows the fp32 model's logits closely."""
    from engine import SamplingParams

    base, q4 = default_models
    base_model, q4_model = base.engine.runner.model, q4.engine.runner.model
    fp32 = dict(base_model.named_modules())
    layers = [(n, m) for n, m in q4_model.named_modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 4 * 30
    for name, layer in layers:
        assert torch.equal(layer._dequantized_cpu(torch.float32), fp32[name].weight), name
    from engine.quantization.sizing import bytes_saved

    mc = q4.engine.runner.config.model
    assert bytes_saved(mc, mc.quantization) == q4.engine.runner.weight_report.bytes_saved > 300 * 2**20
    sp = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=1)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    a, b = base.generate(prompts, sp), q4.generate(prompts, sp)
    first = [o.outputs[0].token_ids[0] for o in a]
    assert [o.outputs[0].token_ids[0] for o in b] == first  # the first token of each prompt


def test_gguf_quantization_of_a_non_gguf_model_is_refused_naming_quantization(tiny_model_dir):
    from engine.config import EngineArgs

    with pytest.raises(ValueError, match="^quantization: 'gguf' runs a GGUF file's own 4-bit blocks"):
        EngineArgs(model=tiny_model_dir("llama"), device="cpu", quantization="gguf").resolve()


def test_q8_0_blocks_become_grouped_int8_equal_to_ggufs_values():
    from engine.quantization.gguf_blocks import int8_from_q8_0_blocks
    from engine.quantization.int8_grouped import GroupedInt8Linear

    raw, expected = quantized(8, seed=2)
    codes, scales = int8_from_q8_0_blocks(raw)
    layer = GroupedInt8Linear(codes, scales, None, torch.float32, torch.device("cpu"))
    assert torch.equal(layer.dequantized(torch.float32), expected)
    x = torch.randn(3, expected.shape[1])
    torch.testing.assert_close(layer(x), x @ expected.T, rtol=1e-5, atol=1e-5)
