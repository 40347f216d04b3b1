"""W8A8 on the CPU: int8 weights per output channel, int8 activations per token, through PyTorch's dynamic
int8 GEMM, or kvserve's C kernel for the same arithmetic (`c_kernel`). Each against the arithmetic written
out in torch, per-token independence (batching changes no sequence's result), the engine option, its byte
accounting and where it is refused."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.quantization.int8 import quantize_int8
from engine.quantization.w8a8 import W8A8Linear, check_w8a8_device, quantize_activations


def _layer_and_inputs(n=160, k=192, seed=0, c_kernel=False):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g)
    x = torch.randn(7, k, generator=g)
    x[2] *= 80.0  # a token with large activations
    x[4] = 0.0  # and one with none
    layer = W8A8Linear(w, b)
    if c_kernel:
        from kernels.cpu import CpuKernelUnavailable, load_decode_step, load_paged_decode

        try:
            layer.use_cpu_kernel(load_decode_step(load_paged_decode()))
        except CpuKernelUnavailable as e:
            pytest.skip(f"no C compiler: {e}")
    return layer, w, b, x


C_KERNEL = pytest.mark.parametrize("c_kernel", [False, True], ids=["fbgemm", "C"])


@C_KERNEL
def test_the_kernel_computes_the_per_token_int8_product_exactly_up_to_float_rounding(c_kernel):
    layer, w, b, x = _layer_and_inputs(c_kernel=c_kernel)
    xq, sx = quantize_activations(x)
    wq, sw = quantize_int8(w, qmax=63)
    assert int(xq.abs().max()) == 127 and xq.shape == x.shape  # 127 levels a side, each row on its own scale
    expected = (xq.double() @ wq.double().t()) * sx.double() * sw.double() + b.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(layer(x)[4], b)  # an all-zero row: codes all zero, only the bias


@C_KERNEL
def test_the_product_stays_within_int8_precision_of_the_fp32_matmul(c_kernel):
    layer, w, b, x = _layer_and_inputs(c_kernel=c_kernel)
    exact = x @ w.t()
    err = (layer(x) - b - exact).norm(dim=1) / exact.norm(dim=1).clamp(min=1e-6)
    assert float(err.max()) < 0.03  # per token: the large row does not coarsen the others


@C_KERNEL
def test_a_rows_result_does_not_depend_on_the_other_rows_of_the_batch(c_kernel):
    layer, _, _, x = _layer_and_inputs(c_kernel=c_kernel)
    alone = torch.cat([layer(x[i:i + 1]) for i in range(x.shape[0])])
    assert torch.equal(layer(x), alone)
    assert torch.equal(layer(x.t().contiguous().t()), alone)  # a column-major input (the skinny GEMM's output)


@C_KERNEL
def test_the_packed_codes_are_the_weights_int8_quantization(c_kernel):
    layer, w, _, _ = _layer_and_inputs(c_kernel=c_kernel)
    assert torch.equal(layer.codes(), quantize_int8(w, qmax=63)[0])
    assert int(layer.codes().abs().max()) == 63  # 7-bit weights: AVX2's 16-bit pair sums cannot saturate
    packed = w.numel() + 4 * w.shape[0]  # codes and an fp32 scale per output channel
    # the C kernel's plain copy of the codes and scales, and an int32 code sum per channel
    assert layer.packed_bytes == (2 * packed + 4 * w.shape[0] if c_kernel else packed)


def test_w8a8_is_refused_off_the_cpu_naming_the_parameter():
    with pytest.raises(ValueError, match="quantization: w8a8 runs on the CPU"):
        check_w8a8_device(torch.device("cuda", 0))
    check_w8a8_device(torch.device("cpu"))


def test_the_projections_and_the_lm_head_become_w8a8(tiny_model_dir):
    model = LLM(tiny_model_dir("llama"), device="cpu", quantization="w8a8").engine.runner.model
    layer0 = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in model.named_modules()
              if name.startswith("layers.0.") and name.count(".") == 3}
    assert set(layer0.values()) == {"W8A8Linear"} and len(layer0) == 4
    assert type(model.quant_head).__name__ == "W8A8Linear"
    kept = LLM(tiny_model_dir("llama"), device="cpu", quantization="w8a8", quantize_lm_head=False).engine.runner.model
    assert kept.quant_head is None


def test_batching_and_chunked_prefill_leave_every_sequences_greedy_output_unchanged(tiny_model_dir):
    # Per-token activation scales make each sequence's tokens independent of what shares its step, so the
    # batch-invariance oracle the unquantized engine meets holds here too.
    prompts = [[5, 9, 100, 7, 3, 81, 2, 44, 19, 6, 250, 12], [17, 4], [300, 301, 5, 8, 9, 10, 11], [42] * 20]
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    model_dir = tiny_model_dir("llama")
    alone = [LLM(model_dir, device="cpu", quantization="w8a8").generate([p], sp)[0].outputs[0].token_ids
             for p in prompts]
    together = LLM(model_dir, device="cpu", quantization="w8a8", max_num_batched_tokens=16).generate(prompts, sp)
    assert [list(o.outputs[0].token_ids) for o in together] == [list(t) for t in alone]


@pytest.mark.slow  # starts a worker process
def test_two_tensor_parallel_ranks_run_w8a8_as_close_to_fp32_as_one_rank_does(tiny_model_dir):
    # Each rank quantizes the slice it holds (a row-parallel layer's weight scales and the activations' token
    # scales cover its input columns only), so two ranks' arithmetic differs from one rank's; what must hold
    # is that it is quantization error of the same size, not a broken shard.
    prompt = [5, 9, 100, 7, 3, 81, 2, 44, 19, 6, 250, 12, 31, 77, 8, 140, 66, 2, 90, 13]
    params = SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=0, ignore_eos=True)
    model_dir = tiny_model_dir("llama")

    def scores(**kwargs) -> list[float]:
        llm = LLM(model_dir, device="cpu", cpu_threads=1, **kwargs)
        try:
            return [p.logprob for p in llm.generate([prompt], params)[0].prompt_logprobs[1:]]
        finally:
            llm.shutdown()

    exact, one, two = scores(), scores(quantization="w8a8"), scores(quantization="w8a8", tensor_parallel_size=2)
    err_one = max(abs(a - b) for a, b in zip(one, exact))
    err_two = max(abs(a - b) for a, b in zip(two, exact))
    assert len(two) == len(prompt) - 1 and 0 < err_two < max(2 * err_one, 0.05), (err_one, err_two)
