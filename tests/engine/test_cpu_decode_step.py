"""Decode steps as one C call (engine/worker/cpu_decode.py): a Llama-shaped model with int8 weights on the CPU.

The oracle is the same engine with `enforce_eager=True`, whose every step runs the model's own forward (the
int8 projections in the same C kernel, everything else in torch): greedy tokens equal and log-probabilities
equal to float32 rounding, through batching, chunked prefill, preemption and prefix-cache hits. Models the C
step does not compute keep the forward, and the startup log says why.
"""

from __future__ import annotations

import logging

import pytest

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)


class CountingStep:
    """The runner's CpuDecodeStep, counting the steps it runs."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def run(self, *args):
        self.calls += 1
        return self.step.run(*args)


def c_step_llm(model_dir: str, quantization: str = "int8", **kw) -> tuple[LLM, CountingStep]:
    llm = LLM(model_dir, device="cpu", quantization=quantization, **kw)
    runner = llm.engine.runner
    if runner.cpu_decode is None:
        kernel = runner.backend.decode_kernel
        pytest.skip("no C kernels on this machine (no C compiler)" if kernel is None else "C step not taken")
    counting = runner.cpu_decode = CountingStep(runner.cpu_decode)
    return llm, counting


def outputs(llm: LLM, prompts, params=GREEDY):
    return [[(c.token_ids, [(lp.token_id, lp.logprob, lp.top) for lp in c.logprobs]) for c in r.outputs]
            for r in llm.generate(prompts, params)]


def assert_same(got, expected):
    """The same tokens (and top tokens); log-probabilities equal to float32 rounding."""
    for g, e in zip(got, expected, strict=True):
        for (g_ids, g_lps), (e_ids, e_lps) in zip(g, e, strict=True):
            assert g_ids == e_ids
            for (gt, glp, gtop), (et, elp, etop) in zip(g_lps, e_lps, strict=True):
                assert gt == et and list(gtop) == list(etop)
                assert glp == pytest.approx(elp, abs=1e-4)
                assert list(gtop.values()) == pytest.approx(list(etop.values()), abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # llama3 RoPE scaling, untied head; q/k/v biases, tied
@pytest.mark.parametrize("setup", [dict(max_num_batched_tokens=16),  # chunked prefill mixed with decodes
                                   dict(block_size=4, num_kv_blocks=24)])  # repeated preemption
@pytest.mark.parametrize("quantization", ["int8", "w8a8"])
def test_decode_steps_in_one_c_call_give_the_forwards_tokens(arch, setup, quantization, tiny_model_dir, prompts_fn):
    shared = prompts_fn(1, [21], seed=7)[0]
    prompts = prompts_fn(4, [1, 5, 17, 40], seed=3) + [shared + [9, 10], shared + [11]]  # prefix-cache hits
    llm, counting = c_step_llm(tiny_model_dir(arch), quantization, **setup)
    got = outputs(llm, prompts)
    eager = LLM(tiny_model_dir(arch), device="cpu", quantization=quantization, enforce_eager=True, **setup)
    assert eager.engine.runner.cpu_decode is None
    assert_same(got, outputs(eager, prompts))
    assert counting.calls >= 8, "the C step hardly ran: the test proves little"
    pool = llm.engine.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


@pytest.mark.parametrize("quantization", ["int8", "w8a8"])
def test_an_int8_kv_cache_is_stored_and_read_as_the_forward_does(quantization, tiny_model_dir, prompts_fn):
    """The step quantizes each new key and value head vector as the cache's store does (one scale per vector)
    and attends over the codes: the eager forward's tokens, through chunked prefill and preemption."""
    prompts = prompts_fn(5, [1, 6, 17, 33, 40], seed=9)
    setup = dict(block_size=4, num_kv_blocks=24, max_num_batched_tokens=16, kv_cache_dtype="int8")
    llm, counting = c_step_llm(tiny_model_dir("llama"), quantization, **setup)
    got = outputs(llm, prompts)
    eager = LLM(tiny_model_dir("llama"), device="cpu", quantization=quantization, enforce_eager=True, **setup)
    assert_same(got, outputs(eager, prompts))
    assert counting.calls >= 8


def test_one_stream_runs_every_decode_step_in_c(tiny_model_dir, prompts_fn):
    llm, counting = c_step_llm(tiny_model_dir("llama"))
    llm.generate(prompts_fn(1, [9], seed=1), SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert counting.calls == 9  # the first token comes from the prefill step


def test_sampled_decoding_is_unchanged(tiny_model_dir, prompts_fn):
    params = SamplingParams(n=2, temperature=0.9, top_p=0.9, max_tokens=10, seed=5, ignore_eos=True)
    prompts = prompts_fn(3, [4, 11, 30], seed=2)
    llm, counting = c_step_llm(tiny_model_dir("llama"))
    got = [[c.token_ids for c in r.outputs] for r in llm.generate(prompts, params)]
    eager = LLM(tiny_model_dir("llama"), device="cpu", quantization="int8", enforce_eager=True)
    assert got == [[c.token_ids for c in r.outputs] for r in eager.generate(prompts, params)]
    assert counting.calls > 0


@pytest.mark.parametrize("arch, kw, reason", [
    ("qwen3", {}, "per-head q/k norms (Qwen3)"),
    ("llama", dict(kv_cache_dtype="fp8_e4m3"), "a torch.float8_e4m3fn KV cache (the C step stores float32 or int8)"),
    ("llama", dict(quantization="int4"), "layers.0.qkv_proj is Int4Linear, not int8 (quantization int8 or w8a8)"),
    ("llama", dict(attention_backend="torch"), "attention backend torch"),
    ("llama", dict(enforce_eager=True), "enforce_eager"),
])
def test_the_startup_log_says_why_decode_steps_keep_the_forward(arch, kw, reason, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="engine.worker.model_runner")
    llm = LLM(tiny_model_dir(arch), device="cpu", **{"quantization": "int8", **kw})
    if "int8 projections: PyTorch's bf16 kernel (no C kernel" in caplog.text:
        pytest.skip("no C compiler on this machine")
    assert llm.engine.runner.cpu_decode is None
    assert "decode steps run the model's forward: " + reason in caplog.text


def test_other_weight_formats_keep_the_forward_and_say_nothing_of_it(tiny_model_dir, caplog):
    """Unquantized float32 weights: no int8 projections, so no C kernel is loaded for them at all."""
    caplog.set_level(logging.INFO, logger="engine.worker.model_runner")
    llm = LLM(tiny_model_dir("llama"), device="cpu")
    assert llm.engine.runner.cpu_decode is None and "Decode steps" not in caplog.text
