"""On a real GPU: the int4 GEMM in bf16 (which the interpreter cannot run) against its reference at
Llama-3.1-8B's projection shapes, and Int4Linear on CUDA: decode batches through the kernel (also inside a
CUDA graph), prefill batches through dequantize + cuBLAS, both the product with the dequantized weights.
Skipped where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch

import kernels
from engine.quantization.int4 import GPU_KERNEL_ROWS, Int4Linear, dequantize_int4, quantize_int4
from kernels.reference import int4_matmul_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BF16 = dict(atol=2e-2, rtol=2e-2)


def packed_case(m, n, k, g, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to("cuda", dtype)
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen).cuda()
    scale = (torch.rand(n, k // g, generator=gen) + 0.5) / (4 * k ** 0.5)
    zero = torch.randn(n, k // g, generator=gen) * 0.02
    return x, q, torch.stack([scale, zero], dim=-1).to("cuda", dtype)


@pytest.mark.parametrize(("m", "n", "k", "g"), [(1, 6144, 4096, 128), (1, 4096, 14336, 32), (16, 28672, 4096, 128),
                                                (33, 4096, 4096, 64), (64, 1000, 512, 256)])
def test_bf16_kernel_matches_the_reference_at_8b_shapes(m, n, k, g):
    x, q, sz = packed_case(m, n, k, g, torch.bfloat16, seed=m + n)
    out = kernels.int4_mm(x, q, sz, g)
    torch.testing.assert_close(out, int4_matmul_ref(x, q, sz, g), **BF16)


def test_int4_linear_on_cuda_is_the_product_with_its_dequantized_weights():
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(1024, 2048, generator=gen) / 2048 ** 0.5).to("cuda", torch.bfloat16)
    b = torch.randn(1024, generator=gen).to("cuda", torch.bfloat16)
    layer = Int4Linear(w, b, 128)
    assert not layer.packed and layer.qweight.shape == (1024, 1024) and layer.qweight.is_cuda
    dense = dequantize_int4(*quantize_int4(w, 128, torch.bfloat16), 128).to(torch.bfloat16)
    for rows in (1, 7, GPU_KERNEL_ROWS, GPU_KERNEL_ROWS + 1, 300):  # kernel up to the threshold, then cuBLAS
        x = torch.randn(rows, 2048, generator=gen).to("cuda", torch.bfloat16)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, dense, b), **BF16)


def test_int4_linear_decode_replays_from_a_cuda_graph():
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) / 64
    layer = Int4Linear(w, None, 128)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)  # compiles outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, layer(x)) and not torch.equal(captured, eager)
