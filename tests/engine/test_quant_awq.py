"""AWQ's packed int4 layout ("gemm": eight codes per int32 in the order 0 2 4 6 1 3 5 7, zeros packed alike,
fp16 scales per group) maps onto the grouped int4 format exactly: the checkpoint is packed here from random
codes with AutoAWQ's documented packing loop, and the mapped layer's weights equal AWQ's dequantization
(q - z) * s bit for bit, through the CPU int4 kernel's packed layout too."""

from __future__ import annotations

import pytest
import torch

from engine.quantization.awq import AWQ_ORDER, int4_from_awq
from engine.quantization.int4 import Int4Linear, dequantize_int4


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """int [R, N] of 0..15 -> int32 [R, N / 8], as AutoAWQ's WQLinear_GEMM packs: nibble i of column j holds
    output 8j + AWQ_ORDER[i]."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int32)
    for j in range(values.shape[1] // 8):
        for i, c in enumerate(AWQ_ORDER):
            packed[:, j] |= values[:, 8 * j + c].to(torch.int32) << (4 * i)
    return packed


@pytest.mark.parametrize("group_size", [32, 128])
def test_awq_checkpoint_tensors_give_awqs_weights_bit_for_bit(group_size):
    g = torch.Generator().manual_seed(group_size)
    n, k = 64, 256
    q = torch.randint(0, 16, (k, n), generator=g)  # AWQ stores [in, out]
    z = torch.randint(0, 16, (k // group_size, n), generator=g)
    s = (torch.rand(k // group_size, n, generator=g) * 0.02 + 1e-3).half()
    expected = ((q - z.repeat_interleave(group_size, 0)).float() * s.float().repeat_interleave(group_size, 0)).t()

    codes, scale, zero = int4_from_awq(pack_awq(q), pack_awq(z), s, group_size)
    assert torch.equal(codes, q.t().to(torch.int32))
    assert torch.equal(dequantize_int4(codes, scale, zero, group_size), expected)
    layer = Int4Linear.from_codes(codes, scale, zero, group_size=group_size, bias=None, dtype=torch.float32,
                                  device=torch.device("cpu"))
    assert torch.equal(layer._dequantized_cpu(torch.float32), expected)
    x = torch.randn(2, k, generator=g)
    torch.testing.assert_close(layer(x), x @ expected.T, rtol=1e-4, atol=1e-4)


def test_mismatched_awq_tensors_are_refused_naming_quantization():
    with pytest.raises(ValueError, match="^quantization: AWQ tensors do not fit together"):
        int4_from_awq(torch.zeros(256, 8, dtype=torch.int32), torch.zeros(4, 8, dtype=torch.int32),
                      torch.zeros(2, 64, dtype=torch.float16), 128)


def awq_checkpoint(src: str, dst, group_size: int = 32):
    """A tiny AWQ checkpoint made here from the HF model at `src`: each projection quantized to 4 bits with a
    zero point per group (min/max), packed as AutoAWQ packs it, config declaring quant_method 'awq'; plus the
    dequantized reference (the same model with (q - z) * s as its dense weights) next to it."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    state = load_file(f"{src}/model.safetensors")
    packed, reference = {}, dict(state)
    for key, w in state.items():
        if not key.endswith(("_proj.weight",)) or ".embed" in key:
            continue
        n, k = w.shape
        wg = w.t().reshape(k // group_size, group_size, n)  # AWQ's [in, out] layout, groups along in
        lo, hi = wg.amin(1), wg.amax(1)
        s = ((hi - lo).clamp(min=1e-5) / 15).half()
        z = torch.round(-lo / s.float()).clamp(0, 15)
        q = torch.round(wg / s.float()[:, None]).add(z[:, None]).clamp(0, 15)
        prefix = key[:-len(".weight")]
        packed[prefix + ".qweight"] = pack_awq(q.reshape(k, n).int())
        packed[prefix + ".qzeros"] = pack_awq(z.int())
        packed[prefix + ".scales"] = s
        reference[key] = ((q - z[:, None]) * s.float()[:, None]).reshape(k, n).t().contiguous()
    for out, tensors in ((dst / "awq", {**{k: v for k, v in state.items() if not k.endswith("_proj.weight")}, **packed}),
                         (dst / "reference", reference)):
        shutil.copytree(src, out)
        save_file(tensors, str(out / "model.safetensors"))
    cfg = json.loads((dst / "awq" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                                  "version": "gemm"}
    (dst / "awq" / "config.json").write_text(json.dumps(cfg))
    return str(dst / "awq"), str(dst / "reference")


def test_an_awq_checkpoint_loads_into_the_int4_path_with_the_dequantized_models_weights(tiny_model_dir, tmp_path):
    from engine import LLM, SamplingParams

    awq_dir, ref_dir = awq_checkpoint(tiny_model_dir("llama"), tmp_path)
    awq, ref = LLM(awq_dir, device="cpu"), LLM(ref_dir, device="cpu")
    assert awq.engine.runner.config.model.quantization.method == "awq"
    dense = dict(ref.engine.runner.model.named_modules())
    layers = [(n, m) for n, m in awq.engine.runner.model.named_modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 4 * 2  # every projection of the tiny model's 2 layers
    for name, layer in layers:
        assert torch.equal(layer._dequantized_cpu(torch.float32), dense[name].weight), name
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    prompts = [[1, 5, 9, 13], [2, 3, 4, 5, 6, 7, 8]]
    a, b = awq.generate(prompts, sp), ref.generate(prompts, sp)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]


def test_another_quantization_on_an_awq_checkpoint_is_refused(tiny_model_dir, tmp_path):
    from engine.config import EngineArgs

    awq_dir, _ = awq_checkpoint(tiny_model_dir("llama"), tmp_path)
    with pytest.raises(ValueError, match="^quantization: the checkpoint is already AWQ-quantized"):
        EngineArgs(model=awq_dir, device="cpu", quantization="int8").resolve()
