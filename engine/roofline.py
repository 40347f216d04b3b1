"""The FLOPs and bytes of a transformer step: the one set of formulas behind `kvserve plan` and the live metrics.

Pure Python on integers and floats (no torch): `engine.tools.capacity` applies these formulas to a
hypothetical batch, the engine to every step it runs (`engine.engine.LLMEngine.step` -> `IterationStats.cost`).

One sequence's share of a step has `start` tokens already in the KV cache and `num_new` tokens computed now
(a decode: num_new = 1; a prefill chunk: the chunk's tokens):

    dense FLOPs     = 2 x dense_params x num_new                      every GEMM but the lm_head
    attention FLOPs = 4 x layers x heads x head_dim x pairs           QK^T and PV, 2 x head_dim each per pair
          pairs     = num_new x start + num_new x (num_new + 1) / 2   query-key pairs, causal within the chunk
    logits FLOPs    = 2 x vocab x hidden, if the share samples a token (the lm_head runs for that row only)
    KV read         = start x kv_bytes_per_token                      the cached context, read once
    KV written      = num_new x kv_bytes_per_token
    and once per step: weight bytes = params x bytes per weight       every weight read once

Sliding-window layers (Mistral, Gemma 2/3, Phi-3): the query at position p of a layer with window W sees
min(p + 1, W) keys, so its pairs are counted per layer, and such a layer reads at most W - 1 cached keys.
Mixture of experts: dense_params are the *active* parameters (a token runs through k of E experts), and a step
of T tokens reads the shared weights plus the share 1 - (1 - k/E)^T of the experts its tokens touch (uniform
routing assumed: the expected number of distinct experts chosen).

So a decode at context c (start = c - 1) attends over c keys and moves c tokens of K/V; a prefill of n tokens
does 2 x layers x heads x head_dim x n(n+1) attention FLOPs. These are the *model* FLOPs and the *minimum* bytes
(activations, padding, gathers and re-reads are not counted): utilizations computed from them are what the
model needs over what the hardware could do, so a real step scores lower, never higher, than its true load.
The embedding table of an untied model is counted in the weight bytes though only the looked-up rows are read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .models.arch import layer_windows, num_experts, text_config

GIB = 1 << 30


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

    @property
    def dense(self) -> int:
        """Weights every computed token is multiplied by: all but the embedding table, the lm_head and the
        experts the token is not routed to."""
        return self.total - self.embedding - self.lm_head - self.experts + self.active_experts


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


@dataclass(frozen=True, slots=True)
class ModelCost:
    """What the formulas need of a model. Unknown heads, vocab or hidden size are 0 (their terms drop out)."""

    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    dense_params: int
    weight_bytes: int
    kv_bytes_per_token: int  # every layer's K and V of one token
    layer_windows: tuple[int | None, ...] = ()  # each layer's sliding window (None: full); empty: all full
    expert_weight_bytes: int = 0  # the routed experts' share of weight_bytes (MoE)
    num_experts: int = 0
    experts_per_token: int = 0

    @classmethod
    def from_hf_config(cls, cfg, weight_bytes_per_param: float, kv_bytes_per_element: int,
                       windows: tuple[int | None, ...] | None = None) -> "ModelCost":
        """`windows`: each layer's window as the engine runs it (None: the config's own)."""
        cfg = text_config(cfg)
        b = count_params(cfg)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        windows = layer_windows(cfg) if windows is None else windows
        experts = num_experts(cfg)
        return cls(num_layers=cfg.num_hidden_layers, num_heads=heads, head_dim=head_dim, hidden_size=cfg.hidden_size,
                   vocab_size=cfg.vocab_size, dense_params=b.dense,
                   weight_bytes=int(-(-b.total * weight_bytes_per_param // 1)),
                   kv_bytes_per_token=2 * cfg.num_hidden_layers * kv_heads * head_dim * kv_bytes_per_element,
                   layer_windows=windows if any(w is not None for w in windows) else (),
                   expert_weight_bytes=int(b.experts * weight_bytes_per_param), num_experts=experts,
                   experts_per_token=int(cfg.num_experts_per_tok) if experts else 0)

    def experts_touched(self, tokens: float) -> float:
        """Expected share of the routed experts a step of `tokens` tokens reads (each token picks k of E,
        uniformly, the formulas assume): 1 - (1 - k/E)^tokens."""
        if not self.num_experts or tokens <= 0:
            return 0.0
        return 1.0 - (1.0 - self.experts_per_token / self.num_experts) ** tokens

    def step_weight_bytes(self, tokens: float) -> float:
        """Weights a step of `tokens` tokens reads: all of a dense model; a MoE model's shared weights plus
        the experts its tokens touch."""
        if not tokens:
            return 0.0
        return float(self.weight_bytes - self.expert_weight_bytes) + self.expert_weight_bytes * self.experts_touched(tokens)


def causal_pairs(start: int, num_new: int, window: int | None) -> int:
    """(query, key) pairs of `num_new` queries at positions start.. over a causal cache: the query at p sees
    p + 1 keys, or min(p + 1, W) with a window W."""
    def upto(m: int) -> int:  # pairs of the queries at positions 0 .. m - 1
        if window is None or m <= window:
            return m * (m + 1) // 2
        return window * (window + 1) // 2 + (m - window) * window
    return upto(start + num_new) - upto(start)


@dataclass(frozen=True, slots=True)
class Share:
    """One sequence's part of a step (`count` identical sequences, for the planner's uniform batches)."""

    start: int  # tokens already in the KV cache
    num_new: int  # tokens computed this step
    sampled: bool  # the share ends in a sampled token (its row goes through the lm_head)
    decode: bool  # a decode (one new output token) rather than a prefill or recompute chunk
    count: int = 1


@dataclass(frozen=True, slots=True)
class StepCost:
    """The model FLOPs and minimum bytes of one step, split by phase (see the module docstring).

    A step that mixes prefill chunks and decodes reads the weights once; that read is split between the
    phases in proportion to their tokens. FLOPs and KV bytes belong to each sequence exactly.
    """

    prefill_tokens: int
    decode_tokens: int
    dense_flops: float
    attention_flops: float
    logits_flops: float
    prefill_flops: float
    decode_flops: float
    weight_bytes: float
    kv_read_bytes: float
    kv_written_bytes: float
    prefill_bytes: float
    decode_bytes: float

    @property
    def flops(self) -> float:
        return self.prefill_flops + self.decode_flops

    @property
    def bytes(self) -> float:
        return self.prefill_bytes + self.decode_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved: left of the ridge a step is memory-bound, right of it compute-bound."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def kind(self) -> str:
        """"prefill", "decode", "mixed" (both in one step) or "idle" (no tokens)."""
        if self.prefill_tokens and self.decode_tokens:
            return "mixed"
        return "prefill" if self.prefill_tokens else "decode" if self.decode_tokens else "idle"


def step_cost(model: ModelCost, shares: Iterable[Share]) -> StepCost:
    # layers by window (one entry, None, for a model without windows): the per-share sums below run over kinds
    kinds = Counter(model.layer_windows) if model.layer_windows else {None: model.num_layers}
    attn_per_pair = 4.0 * model.num_heads * model.head_dim  # per layer
    kv_layer_token = model.kv_bytes_per_token / model.num_layers if model.num_layers else 0.0
    logits_per_row = 2.0 * model.vocab_size * model.hidden_size
    tok = {True: 0, False: 0}
    flops = {True: 0.0, False: 0.0}
    kv = {True: 0.0, False: 0.0}
    dense = attention = logits = kv_read = kv_written = 0.0
    for s in shares:
        n, c = s.num_new, s.count
        d = 2.0 * model.dense_params * n * c
        a = attn_per_pair * sum(k * causal_pairs(s.start, n, win) for win, k in kinds.items()) * c
        lg = logits_per_row * c if s.sampled else 0.0
        # a window layer reads only the cached keys its window still covers (the first new query's window)
        held = sum(k * (s.start if win is None else min(s.start, win - 1)) for win, k in kinds.items())
        r, w = float(held * kv_layer_token * c), float(n * model.kv_bytes_per_token * c)
        dense, attention, logits, kv_read, kv_written = dense + d, attention + a, logits + lg, kv_read + r, kv_written + w
        tok[s.decode] += n * c
        flops[s.decode] += d + a + lg
        kv[s.decode] += r + w
    total = tok[True] + tok[False]
    weights = model.step_weight_bytes(total)
    share_decode = tok[True] / total if total else 0.0
    return StepCost(
        prefill_tokens=tok[False], decode_tokens=tok[True], dense_flops=dense, attention_flops=attention,
        logits_flops=logits, prefill_flops=flops[False], decode_flops=flops[True], weight_bytes=weights,
        kv_read_bytes=kv_read, kv_written_bytes=kv_written,
        prefill_bytes=kv[False] + weights * (1.0 - share_decode), decode_bytes=kv[True] + weights * share_decode,
    )


@dataclass(frozen=True, slots=True)
class Hardware:
    """One accelerator. Memory in bytes; bandwidth in bytes/s; compute in FLOP/s (dense, the weight dtype)."""

    name: str
    memory_bytes: int
    bandwidth: float
    flops: float

    def __post_init__(self) -> None:
        if self.memory_bytes < 1 or not self.bandwidth > 0 or not self.flops > 0:
            raise ValueError(f"gpu: memory, bandwidth and flops must be > 0, got {self}")

    @property
    def peak(self) -> "Peak":
        return Peak(self.name + " (datasheet)", self.flops, self.bandwidth)


# Vendor datasheets. Memory "GB" on these datasheets is binary (a "24 GB" RTX 4090 shows 24564 MiB in
# nvidia-smi), so it is taken as GiB. Bandwidth and FLOP/s are decimal; FLOP/s are dense BF16 tensor-core
# numbers (the datasheets' larger figures assume 2:4 sparsity).
GPU_PRESETS: dict[str, Hardware] = {
    "H200": Hardware("H200 SXM 141GB", 141 * GIB, 4.8e12, 989e12),
    "H100": Hardware("H100 SXM 80GB", 80 * GIB, 3.35e12, 989e12),
    "A100-80GB": Hardware("A100 SXM 80GB", 80 * GIB, 2.039e12, 312e12),
    "L4": Hardware("L4 24GB", 24 * GIB, 0.3e12, 121e12),
    "RTX-4090": Hardware("GeForce RTX 4090 24GB", 24 * GIB, 1.008e12, 165.2e12),
}


@dataclass(frozen=True, slots=True)
class Peak:
    """The ceilings utilization is measured against: FLOP/s and bytes/s, and where they come from."""

    source: str
    flops: float
    bandwidth: float

    def __post_init__(self) -> None:
        if not self.flops > 0 or not self.bandwidth > 0:
            raise ValueError(f"peak: FLOP/s and bandwidth must be > 0, got {self.flops} and {self.bandwidth}")

    @property
    def ridge(self) -> float:
        """The arithmetic intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.flops / self.bandwidth

    def attainable(self, intensity: float) -> float:
        """The roofline: the most FLOP/s a step of this arithmetic intensity can reach."""
        return min(self.flops, intensity * self.bandwidth)

    def utilization(self, cost: StepCost, seconds: float) -> tuple[float, float]:
        """(model FLOPs utilization, memory-bandwidth utilization) of work `cost` done in `seconds`."""
        if seconds <= 0:
            return 0.0, 0.0
        return cost.flops / seconds / self.flops, cost.bytes / seconds / self.bandwidth
