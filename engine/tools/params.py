"""Parameter counts of a decoder from its transformers config, read by attribute only (no torch, no
transformers): dense Llama-style models, mixture-of-experts models (total vs active per token) and Gemma.

    attention / layer = q, k, v, o projections (+ biases) (+ q/k norms: per head in Qwen3 and Gemma 3, over the
                        whole projection in OLMoE)
    MLP / dense layer = 3 x hidden x intermediate (gate, up, down)
    MoE layer         = router (E x hidden) + E experts of 3 x hidden x moe_intermediate; a token uses k of them
    norms / layer     = 2 x hidden (4 in Gemma: pre and post attention and MLP), + the final norm
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.arch import num_experts, text_config


@dataclass(frozen=True, slots=True)
class ParamBreakdown:
    """Where a decoder's parameters are (counts, not bytes)."""

    embedding: int  # the input token table: a lookup, no FLOPs
    attention: int  # all layers: q/k/v/o projections (+ biases, + q/k norms)
    mlp: int  # all layers: dense gate/up/down, and the MoE routers
    norms: int  # all layers' RMSNorms + the final norm
    lm_head: int  # 0 when tied to the embedding
    experts: int = 0  # all layers: every routed expert's gate/up/down
    active_experts: int = 0  # all layers: the k experts one token runs through

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head + self.experts


def _sparse_layers(cfg, layers: int) -> list[int]:
    """The layers whose MLP is a mixture of experts (Qwen3-MoE may keep some dense)."""
    if getattr(cfg, "model_type", "") != "qwen3_moe":
        return list(range(layers))
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    dense = set(getattr(cfg, "mlp_only_layers", None) or [])
    return [i for i in range(layers) if i not in dense and (i + 1) % step == 0]


def count_params(cfg) -> ParamBreakdown:
    """Parameter counts of a supported decoder from its HF config (multimodal Gemma 3: its language model)."""
    cfg = text_config(cfg)
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    model_type = getattr(cfg, "model_type", "")
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attn = h * q_out + 2 * h * kv_out + q_out * h
    if model_type == "qwen2":
        attn += q_out + 2 * kv_out  # q/k/v biases, no o_proj bias
    elif getattr(cfg, "attention_bias", False):
        attn += q_out + 2 * kv_out + h
    if model_type.startswith("qwen3") or model_type == "gemma3_text":
        attn += 2 * head_dim  # per-head RMSNorm on q and k
    elif model_type == "olmoe":
        attn += q_out + kv_out  # RMSNorm over the whole q and k projections
    inter = cfg.intermediate_size
    dense_mlp = 3 * h * inter + (2 * inter + h if getattr(cfg, "mlp_bias", False) else 0)
    norms_per_layer = 4 if model_type.startswith("gemma") else 2
    experts = active = 0
    mlp = layers * dense_mlp
    if (e := num_experts(cfg)):
        sparse = len(_sparse_layers(cfg, layers))
        moe_inter = getattr(cfg, "moe_intermediate_size", None) if model_type == "qwen3_moe" else inter
        expert = 3 * h * moe_inter
        mlp = (layers - sparse) * dense_mlp + sparse * e * h  # dense layers + routers
        experts, active = sparse * e * expert, sparse * cfg.num_experts_per_tok * expert
    return ParamBreakdown(
        embedding=vocab * h,
        attention=layers * attn,
        mlp=mlp,
        norms=layers * norms_per_layer * h + h,
        lm_head=0 if getattr(cfg, "tie_word_embeddings", False) else vocab * h,
        experts=experts,
        active_experts=active,
    )
