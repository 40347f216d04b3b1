"""Decode steps of a Llama-shaped model with int8 weights on the CPU, run as one C call (`--cpu-decode-step`).

A one-stream decode step of SmolLM2-135M is ~1,600 small torch ops from Python: at ~5-15 us of dispatch each
that is more time than reading the int8 weights. `CpuDecodeStep` runs the whole step (every layer, the final
norm) in `kernels/cpu/decode_step.c`: the int8 projections as the modules compute them with the same C
kernel (`Int8Linear`: float32 products with the dequantized weight; `W8A8Linear`: int8 activations, exact
int32 sums), RMSNorm, RoPE, the KV store and the paged decode attention kernel.

It takes a step when every row of it decodes (one token per sequence, in batch order) and the model is one the
C function computes exactly: `LlamaForCausalLM` itself (Llama, Mistral, Qwen2; not Qwen3's q/k norms, Gemma or
Phi-3), SiLU, full-width RoPE, every projection an `Int8Linear` or every one a `W8A8Linear` (quantization
int8 or w8a8) given the C kernel, a float32 or int8 cache (not fp8) with no
sliding window, float32 activations, no tensor parallelism. `create` says which condition failed otherwise;
the model's own forward then runs every step, as it runs every prefill and mixed step anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.cpu import DecodeBatch, DecodeStepKernel, LlamaDecodeWeights, LlamaDims
from ..models.llama import LlamaForCausalLM
from ..quantization.int8 import Int8Linear
from ..quantization.w8a8 import W8A8Linear


class Unsupported(ValueError):
    """The model or its cache is not one the C decode step computes; the message says what differs."""


def _projection(mod, name: str, kind: type) -> Int8Linear | W8A8Linear:
    if type(mod) is not kind or mod.cpu_kernel is None:
        raise Unsupported(f"{name} is {type(mod).__name__}, not int8 (quantization int8 or w8a8) with the C kernel")
    return mod


@dataclass(frozen=True)
class CpuDecodeStep:
    kernel: DecodeStepKernel
    weights: LlamaDecodeWeights

    @classmethod
    def create(cls, model, kernel: DecodeStepKernel, block_size: int, group_windows: tuple[int | None, ...]
               ) -> CpuDecodeStep:
        """The step for `model` (its caches already bound; `group_windows`: each KV-cache group's sliding
        window, `ModelConfig.group_windows`); Unsupported naming the first obstacle."""
        _check_model(model, group_windows)
        kind = type(model.layers[0].self_attn.qkv_proj)
        kind = kind if kind in (Int8Linear, W8A8Linear) else Int8Linear  # the name the first error gives
        layers = [_layer_fields(n, layer, kind) for n, layer in enumerate(model.layers)]
        cfg, first = model.config, model.layers[0].self_attn
        dims = LlamaDims(cfg.hidden_size, first.num_heads, first.num_kv_heads, first.head_dim,
                         model.layers[0].mlp.intermediate_size, block_size, float(cfg.rms_norm_eps), float(first.scale))
        try:
            weights = LlamaDecodeWeights.build(layers, model.embed_tokens.weight.detach(), model.norm.weight.detach(),
                                               model.rotary.cos, model.rotary.sin, dims, w8a8=kind is W8A8Linear)
        except ValueError as e:
            raise Unsupported(str(e)) from e
        return cls(kernel, weights)

    def run(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
        """The final-normed hidden states of a step whose rows all decode (`batch.every_row`)."""
        return self.kernel.llama_decode(self.weights, ids, positions, slots, batch)


def _check_model(model, group_windows) -> None:
    """Unsupported unless the C step computes this model exactly (the per-layer checks: `_layer_fields`)."""
    if type(model) is not LlamaForCausalLM:
        raise Unsupported(f"the model is {type(model).__name__}, not a plain Llama-family decoder")
    cfg = model.config
    if model.tp is not None:
        raise Unsupported("tensor parallelism")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise Unsupported(f"activation {cfg.hidden_act!r} (the C step computes SiLU)")
    if model.embed_tokens.weight.dtype != torch.float32:
        raise Unsupported(f"the model runs in {model.embed_tokens.weight.dtype} (the C step takes float32)")
    if tuple(group_windows) != (None,):
        raise Unsupported("a sliding window")
    if model.rotary.cos.shape[1] != model.layers[0].self_attn.head_dim:
        raise Unsupported("partial rotary embedding")


def _layer_fields(n: int, layer, kind: type) -> dict[str, torch.Tensor | None]:
    """Layer n's tensors under kernels.cpu.decode_step's LAYER_FIELDS names; Unsupported naming what differs."""
    attn, mlp = layer.self_attn, layer.mlp
    if attn.qk_norm:
        raise Unsupported("per-head q/k norms (Qwen3)")
    if attn.key_cache.dtype not in (torch.float32, torch.int8):
        raise Unsupported(f"a {attn.key_cache.dtype} KV cache (the C step stores float32 or int8)")
    fields = {"input_norm": layer.input_layernorm.weight.detach(),
              "post_norm": layer.post_attention_layernorm.weight.detach(),
              "key_cache": attn.key_cache, "value_cache": attn.value_cache}
    if attn.kv_scales is not None:  # an int8 cache: codes, and a scale per (token, KV head) beside them
        fields["key_scales"], fields["value_scales"] = attn.kv_scales
    for stem, mod in (("qkv", attn.qkv_proj), ("o", attn.o_proj), ("gate_up", mlp.gate_up_proj),
                      ("down", mlp.down_proj)):
        mod = _projection(mod, f"layers.{n}.{stem}_proj", kind)
        fields[f"{stem}_weight"], fields[f"{stem}_scale"] = mod.qweight, mod.scale_f32
        fields[f"{stem}_bias"] = None if mod.bias is None else mod.bias.detach().float().contiguous()
        if kind is W8A8Linear:
            fields[f"{stem}_wsum"] = mod.wsum
    return fields
