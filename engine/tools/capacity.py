"""KV-cache capacity and roofline arithmetic: `ModelShape` + `Hardware` + `Workload` -> `CapacityPlan`.

Pure Python on integers and floats: no torch, no transformers (a transformers config is only read by
attribute in `shape_from_hf_config`). `engine.tools.planner` turns flags into these inputs and prints the plan.

    weight_bytes          = params x bytes per weight
                            (with `quantization`: the decoder projections' codes and scales, the rest as is)
    kv_bytes_per_token    = 2 (K and V) x layers x kv_heads x head_dim x bytes per KV element
                            (+ 2 x layers x kv_heads x 4 for an 8-bit cache's fp32 scales, one per token and head)
    kv_bytes_per_sequence = kv_bytes_per_token x context_len
    kv_budget_bytes       = floor(gpu_memory x memory_fraction) - weight_bytes
                            (on the CPU, `cpu_kv_cache_bytes` + the bytes quantization saved, as the server does)
    num_blocks            = floor(kv_budget_bytes / (block_size x kv_bytes_per_token))
    max_concurrent_seqs   = floor(num_blocks / ceil(context_len / block_size))
    decode step bytes     = weight_bytes + batch x context_len x kv_bytes_per_token
    decode step FLOPs     = batch x (2 x dense_params + 2 x vocab x hidden + 4 x layers x heads x head_dim x context_len)
    decode step >= max(bytes / bandwidth, FLOPs / compute)                  (lower bound on TPOT)
    prefill FLOPs         = 2 x dense_params x n + 2 x vocab x hidden + 2 x layers x heads x head_dim x n(n+1)
    prefill bytes         = weight_bytes + n x kv_bytes_per_token
    TTFT >= max(prefill FLOPs / compute, prefill bytes / bandwidth)

The step FLOPs and bytes come from `engine.roofline.step_cost`, the same function the engine applies to every
step it runs for the live metrics, so the planner's bounds and the server's utilization use one arithmetic.

Sliding-window layers hold (and read) at most `window` tokens of a sequence, so "context_len" above becomes, per
layer, min(context_len, window): the KV bound of a Mistral or Gemma. Mixture-of-experts models multiply each
token by its k experts only (dense_params are the active parameters), and a decode step reads the experts its
batch touches: with k of E chosen per token (uniformly, the planner assumes), a batch of B touches a share
1 - (1 - k/E)^B of them.

The budget ignores activations, CUDA graphs and the framework's own memory, so capacity is an upper bound
and the times are lower bounds: a real server does worse, never better.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..quantization.checkpoint_formats import PREPACKED_METHODS
from ..roofline import GIB, GPU_PRESETS, Hardware, ModelCost, ParamBreakdown, Share, count_params, step_cost

__all__ = ["GIB", "GPU_PRESETS", "Hardware", "ParamBreakdown", "count_params", "ModelShape", "Workload", "CapacityPlan",
           "plan_capacity", "shape_from_hf_config", "dtype_name", "WEIGHT_DTYPE_BYTES", "KV_DTYPE_BYTES"]

WEIGHT_DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
KV_DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
# an 8-bit KV cache stores one fp32 scale per (token, KV head) beside the codes: engine.quantization.config
KV_SCALE_BYTES = 4
QUANT_METHODS = ("int8", "int4", "fp8", "w8a8") + PREPACKED_METHODS  # the last: pre-quantized int4 checkpoints
_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float8": "fp8",
            "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, kv_bytes_per_element: int) -> int:
    """K and V of one token over every layer; a 1-byte (int8 / fp8) cache adds its per-head fp32 scales."""
    scales = KV_SCALE_BYTES if kv_bytes_per_element == 1 else 0
    return 2 * num_layers * num_kv_heads * (head_dim * kv_bytes_per_element + scales)


def projection_shapes(model: "ModelShape") -> list[tuple[int, int]]:
    """(out_features, in_features) of every decoder projection the server quantizes (q/k/v, o, gate/up, down)."""
    if model.hidden_size is None or model.num_heads is None or model.intermediate_size is None:
        raise ValueError("quantization: needs the model's hidden size, heads and MLP width (give --model or "
                         "--model-config, not an explicit shape)")
    if model.num_experts:
        raise ValueError("quantization: the server quantizes dense models only; this one has experts")
    q, kv, h, i = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim, model.hidden_size, \
        model.intermediate_size
    return [(q + 2 * kv, h), (h, q), (2 * i, h), (h, i)] * model.num_layers


DEFAULT_INT4_GROUP = 32  # the server's default int4 group size (engine.config.EngineArgs._resolve_quantization)


def quantized_weight_bytes(model: "ModelShape", base_bytes: float, method: str, group_size: int | None,
                           scale_bytes: float | None = None, lm_head: bool = True) -> int:
    """The model's weights with its projections in `method` and everything else (embedding, norms, biases,
    and the LM head unless `lm_head`) at `base_bytes` per parameter: what engine.quantization.sizing counts
    for the server. `scale_bytes`: the int8/int4 scales' size (the CPU kernels keep them in bf16: 2; None:
    the model's dtype). `lm_head` (int8/int4, the server's default): the LM head in int8 with a scale per
    vocabulary row; a tied head is a copy beside the embedding, which the lookup keeps. w8a8 counts its codes
    twice, as a server with a C compiler holds them (fbgemm's packed weight and the C kernel's copy)."""
    shapes = projection_shapes(model)
    group = group_size or DEFAULT_INT4_GROUP
    sb = base_bytes if scale_bytes is None else scale_bytes
    total = 0
    for o, i in shapes:
        if method == "int8":
            total += o * i + o * sb  # a scale per output channel
        elif method == "int4":
            total += o * i // 2 + o * (i // group) * 2 * sb  # a scale and a zero per group
        elif method == "w8a8":  # fbgemm's packed codes and scales, and the CPU C kernel's copy (+ code sums)
            total += 2 * (o * i + o * 4) + o * 4
        else:
            total += o * i + o * 4  # fp8: an fp32 scale per output channel
    rest = model.num_params - sum(o * i for o, i in shapes)
    if lm_head and method in ("int8", "int4", "w8a8") and model.vocab_size and model.hidden_size and model.breakdown:
        head = model.vocab_size * model.hidden_size
        v = model.vocab_size
        total += 2 * (head + 4 * v) + 4 * v if method == "w8a8" else head + v * sb
        if model.breakdown.lm_head:  # untied: the int8 head replaces the full-precision one
            rest -= head
    return math.ceil(rest * base_bytes + total)



def dtype_name(name: str, table: dict, what: str) -> str:
    """Canonical dtype name (fp16 for float16/half...); ValueError names `what` and the choices."""
    canon = _ALIASES.get(name.lower(), name.lower())
    if canon not in table:
        raise ValueError(f"{what}: unknown dtype {name!r}; use one of {', '.join(table)}")
    return canon


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the planner needs to know about a model."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_params: int
    hidden_size: int | None = None
    num_heads: int | None = None  # query heads, for the attention FLOPs
    vocab_size: int | None = None
    breakdown: ParamBreakdown | None = None
    layer_windows: tuple[int | None, ...] = ()  # each layer's sliding window (None: full); empty: all full
    num_experts: int = 0  # routed experts per MoE layer (0: dense)
    experts_per_token: int = 0
    intermediate_size: int | None = None  # the MLP width (for the quantized projections' shapes)

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_kv_heads", "head_dim", "num_params"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}: must be >= 1, got {getattr(self, field)}")
        if self.breakdown is not None and self.breakdown.total != self.num_params:
            raise ValueError(f"num_params: {self.num_params} disagrees with the breakdown's {self.breakdown.total}")

    @property
    def dense_params(self) -> int:
        """Weights every prompt token is multiplied by: all but the embedding table and the lm_head (the
        lm_head runs once, for the last token). Without a breakdown: every parameter (an overestimate)."""
        return self.num_params if self.breakdown is None else self.breakdown.dense

    @property
    def active_params(self) -> int:
        """Parameters one token uses: all of a dense model; a MoE model's shared ones plus k experts."""
        b = self.breakdown
        return self.num_params if b is None else self.num_params - b.experts + b.active_experts

    def kv_tokens(self, context_len: int) -> int:
        """Layer-tokens of KV a sequence of context_len holds: context_len per full layer, at most the window
        per sliding-window layer."""
        windows = self.layer_windows or (None,) * self.num_layers
        return sum(context_len if w is None else min(context_len, w) for w in windows)


def shape_from_hf_config(cfg, name: str) -> ModelShape:
    from ..models.arch import layer_windows, num_experts

    cfg = getattr(cfg, "text_config", None) or cfg
    breakdown = count_params(cfg)
    heads = cfg.num_attention_heads
    experts = num_experts(cfg)
    windows = layer_windows(cfg) if hasattr(cfg, "model_type") else ()
    return ModelShape(
        name=name,
        num_layers=cfg.num_hidden_layers,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        num_params=breakdown.total,
        hidden_size=cfg.hidden_size,
        num_heads=heads,
        vocab_size=cfg.vocab_size,
        breakdown=breakdown,
        layer_windows=windows if any(w is not None for w in windows) else (),
        num_experts=experts,
        experts_per_token=cfg.num_experts_per_tok if experts else 0,
        intermediate_size=getattr(cfg, "intermediate_size", None),
    )


@dataclass(frozen=True, slots=True)
class Workload:
    """What the plan is for. `batch_size` None: as many sequences as the KV cache holds (at least 1)."""

    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    memory_fraction: float = 0.9
    context_len: int = 2048
    block_size: int = 16
    batch_size: int | None = None
    prompt_len: int | None = None  # for TTFT; None: context_len
    quantization: str | None = None  # the server's --quantization: projections int8 / int4 / fp8, the rest weight_dtype
    # (awq / gptq / compressed-tensors: a pre-quantized checkpoint's int4, scales in weight_dtype, no int8 head)
    group_size: int | None = None  # int4 and pre-quantized only; None: the server's default
    cpu_kv_cache_bytes: int | None = None  # plan the CPU server: this KV budget (+ what quantization saves)
    quantize_lm_head: bool = True  # the server's --quantize-lm-head (int8/int4)

    def __post_init__(self) -> None:
        dtype_name(self.weight_dtype, WEIGHT_DTYPE_BYTES, "dtype")
        dtype_name(self.kv_dtype, KV_DTYPE_BYTES, "kv_dtype")
        if self.quantization is not None:
            if self.quantization not in QUANT_METHODS:
                raise ValueError(f"quantization: must be one of {QUANT_METHODS}, got {self.quantization!r}")
            if self.weight_dtype not in ("fp32", "fp16", "bf16"):
                raise ValueError(f"dtype: with quantization it is the model's dtype (fp32, fp16 or bf16), "
                                 f"got {self.weight_dtype}")
        if self.group_size is not None and self.quantization not in ("int4",) + PREPACKED_METHODS:
            raise ValueError("quantization_group_size: only applies with quantization='int4'")
        if self.cpu_kv_cache_bytes is not None and self.cpu_kv_cache_bytes < 1:
            raise ValueError(f"cpu_kv_cache_gb: must be > 0, got {self.cpu_kv_cache_bytes} bytes")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"memory_fraction: must be in (0, 1], got {self.memory_fraction}")
        for field in ("context_len", "block_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}: must be >= 1, got {getattr(self, field)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.prompt_len is not None and self.prompt_len < 1:
            raise ValueError(f"prompt_len: must be >= 1, got {self.prompt_len}")


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """Every number the planner reports (bytes, seconds, FLOPs, tokens/s)."""

    weight_bytes_per_param: float
    kv_bytes_per_element: int
    weight_bytes: int
    kv_bytes_per_token: int
    kv_bytes_per_sequence: int
    usable_memory_bytes: int  # floor(memory x fraction)
    kv_budget_bytes: int  # usable - weights (negative: the weights do not fit)
    block_bytes: int
    num_blocks: int
    num_kv_tokens: int
    blocks_per_sequence: int
    max_concurrent_sequences: int
    batch_size: int
    decode_step_bytes: int
    decode_step_flops: float
    decode_step_memory_s: float
    decode_step_compute_s: float
    decode_step_lower_bound_s: float  # a lower bound on TPOT at this batch and context
    max_output_tokens_per_s: float  # batch / decode step: an upper bound
    prompt_len: int
    prefill_dense_flops: float
    prefill_attention_flops: float
    prefill_flops: float
    prefill_compute_s: float
    prefill_bytes: int
    prefill_memory_s: float
    ttft_lower_bound_s: float
    decode_weight_bytes: int = 0  # weights one decode step reads: all, or for MoE the experts its batch touches
    experts_touched: float = 0.0  # the share of routed experts a decode step's batch touches (MoE)

    @property
    def weights_fit(self) -> bool:
        return self.kv_budget_bytes > 0


def model_cost(model: ModelShape, weight_bytes_per_param: float, kv_bytes_per_element: int) -> ModelCost:
    """The shape as the shared formulas see it. Without a breakdown (an explicit shape) the lm_head is not
    known apart, so there is no logits term, and unknown query heads drop the attention term."""
    known = model.breakdown is not None
    experts = model.breakdown.experts if known else 0
    return ModelCost(num_layers=model.num_layers, num_heads=model.num_heads or 0, head_dim=model.head_dim,
                     hidden_size=(model.hidden_size or 0) if known else 0, vocab_size=(model.vocab_size or 0) if known else 0,
                     dense_params=model.dense_params, weight_bytes=math.ceil(model.num_params * weight_bytes_per_param),
                     kv_bytes_per_token=kv_bytes_per_token(model.num_layers, model.num_kv_heads, model.head_dim,
                                                           kv_bytes_per_element),
                     layer_windows=model.layer_windows, expert_weight_bytes=math.ceil(experts * weight_bytes_per_param),
                     num_experts=model.num_experts, experts_per_token=model.experts_per_token)


def plan_capacity(model: ModelShape, gpu: Hardware, work: Workload) -> CapacityPlan:
    """The capacity and roofline numbers for `model` on `gpu` under `work` (see the module docstring)."""
    w_bytes = WEIGHT_DTYPE_BYTES[dtype_name(work.weight_dtype, WEIGHT_DTYPE_BYTES, "dtype")]
    kv_elem = KV_DTYPE_BYTES[dtype_name(work.kv_dtype, KV_DTYPE_BYTES, "kv_dtype")]
    cost = model_cost(model, w_bytes, kv_elem)
    if work.quantization is not None:
        # the CPU kernels keep int8/int4 scales in bf16 (engine.quantization.int8.CPU_KERNEL_DTYPE); pre-quantized
        # int4 keeps the checkpoint's exact scales in the model's dtype and its LM head as it is
        prepacked = work.quantization in PREPACKED_METHODS
        scale_bytes = 2 if work.cpu_kv_cache_bytes is not None and not prepacked else None
        quantized = quantized_weight_bytes(model, w_bytes, "int4" if prepacked else work.quantization,
                                           work.group_size, scale_bytes, work.quantize_lm_head and not prepacked)
        # the bytes a decode step reads shrink with the weights (per parameter on average)
        cost = dataclasses.replace(cost, weight_bytes=quantized)
        w_bytes = quantized / model.num_params
    weight_bytes, kv_token = cost.weight_bytes, cost.kv_bytes_per_token
    kv_seq = kv_token // model.num_layers * model.kv_tokens(work.context_len)
    usable = math.floor(gpu.memory_bytes * work.memory_fraction)
    if work.cpu_kv_cache_bytes is not None:
        # the CPU server: the weights as loaded at the model's dtype plus --cpu-kv-cache-gb; quantizing the
        # weights gives the bytes it saves to the KV cache (engine.worker.model_runner)
        usable = work.cpu_kv_cache_bytes + model_cost(model, WEIGHT_DTYPE_BYTES[work.weight_dtype], kv_elem).weight_bytes
    budget = usable - weight_bytes
    block_bytes = work.block_size * kv_token
    blocks = max(budget, 0) // block_bytes
    # a window layer holds at most the blocks its window spans (ceil((W - 1) / bs) + 1); counted in whole-model
    # blocks (every layer's K and V of block_size tokens)
    full = -(-work.context_len // work.block_size)
    windows = model.layer_windows or (None,) * model.num_layers
    layer_blocks = sum(full if w is None else min(full, -(-(w - 1) // work.block_size) + 1) for w in windows)
    blocks_per_seq = -(-layer_blocks // model.num_layers)
    max_seqs = blocks // blocks_per_seq
    batch = work.batch_size if work.batch_size is not None else max(max_seqs, 1)

    step = step_cost(cost, [Share(start=work.context_len - 1, num_new=1, sampled=True, decode=True, count=batch)])
    step_bytes, step_flops = int(step.bytes), step.flops
    mem_s, comp_s = step_bytes / gpu.bandwidth, step_flops / gpu.flops
    step_s = max(mem_s, comp_s)

    n = work.prompt_len or work.context_len
    prefill_step = step_cost(cost, [Share(start=0, num_new=n, sampled=True, decode=False)])
    dense = prefill_step.dense_flops + prefill_step.logits_flops
    attention = prefill_step.attention_flops
    prefill = prefill_step.flops
    return CapacityPlan(
        weight_bytes_per_param=w_bytes,
        kv_bytes_per_element=kv_elem,
        weight_bytes=weight_bytes,
        kv_bytes_per_token=kv_token,
        kv_bytes_per_sequence=kv_seq,
        usable_memory_bytes=usable,
        kv_budget_bytes=budget,
        block_bytes=block_bytes,
        num_blocks=blocks,
        num_kv_tokens=blocks * work.block_size,
        blocks_per_sequence=blocks_per_seq,
        max_concurrent_sequences=max_seqs,
        batch_size=batch,
        decode_step_bytes=step_bytes,
        decode_step_flops=step_flops,
        decode_step_memory_s=mem_s,
        decode_step_compute_s=comp_s,
        decode_step_lower_bound_s=step_s,
        max_output_tokens_per_s=batch / step_s,
        prompt_len=n,
        prefill_dense_flops=dense,
        prefill_attention_flops=attention,
        prefill_flops=prefill,
        prefill_compute_s=prefill / gpu.flops,
        prefill_bytes=int(prefill_step.bytes),
        prefill_memory_s=prefill_step.bytes / gpu.bandwidth,
        ttft_lower_bound_s=max(prefill / gpu.flops, prefill_step.bytes / gpu.bandwidth),
        decode_weight_bytes=int(step.weight_bytes),
        experts_touched=cost.experts_touched(batch),
    )
