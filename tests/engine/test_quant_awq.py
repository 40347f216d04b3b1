"""AWQ's packed int4 layout ("gemm": eight codes per int32 in the order 0 2 4 6 1 3 5 7, zeros packed alike,
fp16 scales per group) maps onto the grouped int4 format exactly: the tensors are packed here from random
codes with AutoAWQ's documented packing loop, and the mapped layer's weights equal AWQ's dequantization
(q - z) * s bit for bit, through the CPU int4 kernel's packed layout too. Loading whole checkpoints:
test_quant_prepacked.py."""

from __future__ import annotations

import pytest
import torch

from engine.quantization.awq import int4_from_awq
from engine.quantization.int4 import Int4Linear, dequantize_int4
from tests.engine.prepacked_helpers import dequantize, pack_awq, random_codes


@pytest.mark.parametrize("group_size", [32, 128])
def test_awq_checkpoint_tensors_give_awqs_weights_bit_for_bit(group_size):
    n, k = 64, 256
    q, z, s = random_codes(n, k, k // group_size, group_size)
    expected = dequantize(q, z, s)

    codes, scale, zero = int4_from_awq(**pack_awq(q, z, s), group_size=group_size)
    assert torch.equal(codes, q.to(torch.int32))
    assert torch.equal(dequantize_int4(codes, scale, zero, group_size), expected)
    layer = Int4Linear.from_codes(codes, scale, zero, group_size=group_size, bias=None, dtype=torch.float32,
                                  device=torch.device("cpu"))
    assert torch.equal(layer._dequantized_cpu(torch.float32), expected)
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x), x @ expected.T, rtol=1e-4, atol=1e-4)


def test_mismatched_awq_tensors_are_refused_naming_quantization():
    with pytest.raises(ValueError, match="^quantization: AWQ tensors do not fit together"):
        int4_from_awq(torch.zeros(256, 8, dtype=torch.int32), torch.zeros(4, 8, dtype=torch.int32),
                      torch.zeros(2, 64, dtype=torch.float16), 128)
