"""GPTQ's packing (codes eight inputs a word, zero points eight outputs a word, stored minus one in v1
checkpoints) maps onto the grouped int4 format exactly; what kvserve cannot run is refused naming
`quantization`. Whole checkpoints: test_quant_prepacked.py."""

from __future__ import annotations

import pytest
import torch

from engine.quantization.checkpoint_formats import CheckpointFormat, checkpoint_format
from engine.quantization.gptq import int4_from_gptq
from engine.quantization.int4 import dequantize_int4
from engine.quantization.prepacked import regroup
from tests.engine.prepacked_helpers import dequantize, gptq_config, pack_gptq, random_codes


@pytest.mark.parametrize("group_size, zero_offset", [(32, 1), (128, 1), (64, 0)])
def test_gptq_tensors_give_gptqs_weights_bit_for_bit(group_size, zero_offset):
    n, k = 64, 256
    q, z, s = random_codes(n, k, k // group_size, group_size, min_zero=zero_offset)
    codes, scale, zero = int4_from_gptq(**pack_gptq(q, z, s, zero_offset), group_size=group_size,
                                        zero_offset=zero_offset)
    assert torch.equal(codes, q.to(torch.int32))
    assert torch.equal(dequantize_int4(codes, scale, zero, group_size), dequantize(q, z, s))


def test_a_v1_zero_point_of_zero_reads_back_as_sixteen_as_gptq_kernels_read_it():
    # v1 stores z - 1: a zero point of 0 is stored as -1, whose nibble is 15, so every v1 reader sees 16
    q, z, s = random_codes(32, 64, 2, 0, min_zero=1)
    z[0, 0] = 0
    packed = pack_gptq(q, z, s, zero_offset=1)
    assert (packed["qzeros"][0, 0] & 15).item() == 15
    codes, scale, zero = int4_from_gptq(**packed, group_size=32, zero_offset=1)
    read = z.clone()
    read[0, 0] = 16
    assert torch.equal(dequantize_int4(codes, scale, zero, 32), dequantize(q, read, s))


def test_per_channel_scales_are_repeated_over_kernel_groups_exactly():
    q, z, s = random_codes(32, 256, 1, 3)
    per_channel = int4_from_gptq(**pack_gptq(q, z, s, 0), group_size=None, zero_offset=0)
    codes, scale, zero = regroup(per_channel, 128)
    assert scale.shape == (32, 2)
    assert torch.equal(dequantize_int4(codes, scale, zero, 128), dequantize(q, z, s))


def test_act_order_with_reordered_inputs_is_refused_naming_quantization():
    q, z, s = random_codes(32, 64, 2, 1)
    packed = pack_gptq(q, z, s)
    packed["g_idx"] = packed["g_idx"].flip(0)  # desc_act: inputs assigned to groups out of order
    with pytest.raises(ValueError, match="^quantization: GPTQ act-order .* not supported"):
        int4_from_gptq(**packed, group_size=32)
    packed = pack_gptq(q, z, s)  # desc_act declared but g_idx plain k // g: nothing to reorder, loads
    int4_from_gptq(**packed, group_size=32)


def test_mismatched_gptq_tensors_are_refused_naming_quantization():
    q, z, s = random_codes(32, 64, 2, 2)
    with pytest.raises(ValueError, match="^quantization: GPTQ tensors do not fit together"):
        int4_from_gptq(**pack_gptq(q, z, s), group_size=64)


def test_gptq_configs_map_to_formats():
    assert checkpoint_format(gptq_config(128, True)) == CheckpointFormat("gptq", 128, 1)
    assert checkpoint_format(gptq_config(None, False, "gptq_v2")) == CheckpointFormat("gptq", None, 0)
    assert checkpoint_format({**gptq_config(64, True), "desc_act": True}) == CheckpointFormat("gptq", 64, 1)
    assert CheckpointFormat("gptq", 1024, 1).kernel_group([4096, 4096, 14336]) == 256
    assert CheckpointFormat("gptq", None, 1).kernel_group([64, 64, 128]) == 64


@pytest.mark.parametrize("change, message", [
    ({"bits": 8}, "GPTQ with bits=8 is not supported"),
    ({"bits": 3}, "GPTQ with bits=3 is not supported"),
    ({"checkpoint_format": "marlin"}, "GPTQ checkpoint_format 'marlin' is not supported"),
    ({"is_marlin_format": True}, "GPTQ checkpoint_format 'gptq' is not supported"),
    ({"lm_head": True}, "GPTQ with a quantized LM head"),
    ({"dynamic": {"-:.*down_proj": {}}}, "GPTQ with per-module overrides"),
    ({"group_size": 0}, "GPTQ group_size 0 is not a positive size or -1"),
])
def test_unsupported_gptq_configs_are_refused_naming_quantization(change, message):
    with pytest.raises(ValueError, match=f"^quantization: {message}"):
        checkpoint_format({**gptq_config(128, False), **change})


def test_a_group_no_kernel_group_tiles_is_refused_naming_quantization():
    with pytest.raises(ValueError, match=r"^quantization: GPTQ group_size \[48\] cannot be built"):
        checkpoint_format(gptq_config(48, False)).kernel_group([4096])
