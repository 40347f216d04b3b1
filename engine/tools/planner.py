"""`kvserve plan`: how much KV cache fits, how many sequences it serves, and how fast a step can be.

Flags pick a model shape (a model directory or GGUF file, a named shape, or explicit numbers), a GPU
(a datasheet preset or custom numbers) and a workload; `engine.tools.capacity.plan_capacity` does the
arithmetic; this module only turns flags into its inputs and prints the result with the formulas filled
in (or as JSON with `--json`). Only reading a model's config imports transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys

from engine.tools.capacity import (GIB, GPU_PRESETS, KV_DTYPE_BYTES, QUANT_METHODS, WEIGHT_DTYPE_BYTES, CapacityPlan,
                                   Hardware, ModelShape, Workload, dtype_name, plan_capacity, shape_from_hf_config)

TIGHT_FIT_SEQUENCES = 16  # below this many concurrent sequences, the output explains why


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model (one of: --model, --model-config, explicit numbers)")
    m.add_argument("--model", default=None, help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    m.add_argument("--model-config", default=None, help="a named shape, e.g. llama-3.1-8b, mixtral-8x7b, qwen3-30b-a3b, "
                                                       "gemma-3-4b, phi-3-mini")
    m.add_argument("--num-layers", type=int, default=None, help="explicit shape: transformer layers")
    m.add_argument("--num-kv-heads", type=int, default=None, help="explicit shape: key/value heads")
    m.add_argument("--head-dim", type=int, default=None, help="explicit shape: dimension of one head")
    m.add_argument("--num-params", type=float, default=None, help="explicit shape: parameter count (e.g. 7e9)")
    m.add_argument("--hidden-size", type=int, default=None, help="explicit shape, optional: hidden size")
    m.add_argument("--num-heads", type=int, default=None, help="explicit shape, optional: query heads (attention FLOPs)")

    g = parser.add_argument_group("GPU (a preset, optionally with fields overridden)")
    g.add_argument("--gpu", choices=sorted(GPU_PRESETS), default="H100", help="datasheet preset (default H100)")
    g.add_argument("--gpu-memory", default=None,
                   help="memory with a unit: 24GiB (binary), 24GB (decimal), 80G or a bare 80 (GiB, as GPU datasheets "
                        "mean it); the plan says which it assumed")
    g.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in TB/s")
    g.add_argument("--flops", type=float, default=None, help="dense compute in TFLOP/s at the weight dtype")

    w = parser.add_argument_group("workload")
    w.add_argument("--dtype", default="bf16", help=f"weight dtype: {', '.join(WEIGHT_DTYPE_BYTES)} (default bf16)")
    w.add_argument("--kv-dtype", default="auto", help=f"KV-cache dtype: {', '.join(KV_DTYPE_BYTES)} (the server's fp8_e4m3, "
                   "fp8_e5m2 are fp8; 8-bit caches count their per-token, per-head fp32 scales too) or auto = the "
                   "weight dtype, bf16 for fp8/int weights")
    w.add_argument("--quantization", default=None, choices=QUANT_METHODS,
                   help="the server's --quantization: decoder projections in this format (codes + scales), the "
                        "embedding, lm_head and norms at --dtype, which is then the model's dtype; a --model "
                        "whose config declares awq / gptq / compressed-tensors is planned as its int4 by itself")
    w.add_argument("--quantization-group-size", type=int, default=None,
                   help="int4 only: input columns per scale and zero (default: the server's, 32)")
    w.add_argument("--quantize-lm-head", action=argparse.BooleanOptionalAction, default=True,
                   help="with int8/int4: the LM head in int8 too, as the server does by default")
    w.add_argument("--cpu-kv-cache-gb", type=float, default=None,
                   help="plan the CPU server instead of a GPU: its KV budget (the server's --cpu-kv-cache-gb), to which "
                        "it adds the bytes quantization saves")
    w.add_argument("--memory-fraction", type=float, default=0.9, help="share of GPU memory for weights + KV cache (default 0.9)")
    w.add_argument("--context-len", type=int, default=2048, help="tokens per sequence (prompt + output) (default 2048)")
    w.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    w.add_argument("--batch-size", type=int, default=None, help="sequences per decode step (default: as many as fit)")
    w.add_argument("--prompt-len", type=int, default=None, help="prompt tokens for the TTFT bound (default: --context-len)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def shape_from_args(args: argparse.Namespace) -> ModelShape:
    explicit = [args.num_layers, args.num_kv_heads, args.head_dim, args.num_params]
    chosen = sum([args.model is not None, args.model_config is not None, any(v is not None for v in explicit)])
    if chosen > 1:
        raise ValueError("model: give one of --model, --model-config or explicit --num-layers/--num-kv-heads/--head-dim/--num-params")
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("model: explicit shapes need all of --num-layers, --num-kv-heads, --head-dim and --num-params")
        return ModelShape("custom", args.num_layers, args.num_kv_heads, args.head_dim, int(args.num_params),
                          hidden_size=args.hidden_size, num_heads=args.num_heads)
    if args.model_config is not None:
        from engine.models.shapes import named_config
        return shape_from_hf_config(named_config(args.model_config), args.model_config)
    from engine.models.resolve import DEFAULT_MODEL_NAME, load_hf_config
    from pathlib import Path
    name = DEFAULT_MODEL_NAME if args.model is None else Path(args.model).stem
    return shape_from_hf_config(load_hf_config(args.model), name)


_PREFIX_POWER = {"K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(?:([KMGT])(iB|B)?|(B))?\s*", re.IGNORECASE)


def parse_memory(text: str) -> tuple[int, str]:
    """"24GiB" -> (24 x 2^30, how it was read). GiB/MiB/TiB are binary and GB/MB/TB decimal; a bare number or a
    bare prefix (80, 80G) is GiB, because GPU datasheets' "GB" of HBM/GDDR means GiB (a "24 GB" card has 24 GiB)."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"gpu_memory: expected a size such as 24GiB, 24GB, 80G or 80, got {text!r}")
    number, prefix, suffix, plain_bytes = m.groups()
    value = float(number)
    if plain_bytes:
        n, how = int(value), f"{text.strip()} read as {int(value):,} B"
    elif prefix and suffix and suffix.upper() == "B":
        p = prefix.upper()
        n = int(value * 1000 ** _PREFIX_POWER[p])
        how = f"{text.strip()} read as decimal {p}B = {n:,} B (write {number}{p}iB for binary)"
    else:
        p = (prefix or "G").upper()
        n = int(value * 1024 ** _PREFIX_POWER[p])
        how = f"{text.strip()} read as binary {p}iB = {n:,} B"
        if not suffix:
            how += f" (no unit given: {p}iB, as GPU datasheets mean 'GB'; write {number}{p}B for decimal)"
    if n < 1:
        raise ValueError(f"gpu_memory: must be > 0, got {text!r}")
    return n, how


def gpu_from_args(args: argparse.Namespace) -> Hardware:
    gpu = GPU_PRESETS[args.gpu]
    overrides = {}
    if args.gpu_memory is not None:
        overrides["memory_bytes"] = parse_memory(str(args.gpu_memory))[0]
    if args.bandwidth is not None:
        overrides["bandwidth"] = args.bandwidth * 1e12
    if args.flops is not None:
        overrides["flops"] = args.flops * 1e12
    if overrides:
        gpu = dataclasses.replace(gpu, name=f"custom ({args.gpu} with {', '.join(sorted(overrides))} set)", **overrides)
    return gpu


def quantization_from_args(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """(quantization, group size) as the server resolves them: a pre-quantized --model's own int4 format and
    kernel group (engine.quantization.checkpoint_formats), else the flags."""
    from engine.quantization.checkpoint_formats import declared_format, in_features

    hf_config = None
    if args.model is not None:
        from engine.models.resolve import load_hf_config
        hf_config = load_hf_config(args.model)
    prepacked = declared_format(hf_config, args.quantization)
    if prepacked is None:
        return args.quantization, args.quantization_group_size
    if args.quantization_group_size is not None:  # as the server: the checkpoint's groups are its own
        raise ValueError(f"quantization_group_size: only applies with quantization='int4', the checkpoint is "
                         f"{prepacked.method}")
    return prepacked.method, prepacked.kernel_group(in_features(getattr(hf_config, "text_config", None) or hf_config))


def workload_from_args(args: argparse.Namespace) -> Workload:
    quantization, group = quantization_from_args(args)
    weight = dtype_name(args.dtype, WEIGHT_DTYPE_BYTES, "dtype")
    kv = (weight if weight in ("fp32", "fp16", "bf16") else "bf16") if args.kv_dtype == "auto" else args.kv_dtype
    return Workload(weight_dtype=weight, kv_dtype=dtype_name(kv, KV_DTYPE_BYTES, "kv_dtype"),
                    memory_fraction=args.memory_fraction, context_len=args.context_len, block_size=args.block_size,
                    batch_size=args.batch_size, prompt_len=args.prompt_len, quantization=quantization,
                    group_size=group, quantize_lm_head=args.quantize_lm_head,
                    cpu_kv_cache_bytes=None if args.cpu_kv_cache_gb is None else int(args.cpu_kv_cache_gb * 2**30))


# ---- output ------------------------------------------------------------------------------------------
def _b(n: float) -> str:
    """Exact bytes, then a readable size (KiB/MiB below 1 GB, decimal GB above)."""
    if abs(n) < 1 << 20:
        return f"{n:,.0f} B ({n / 1024:,.0f} KiB)"
    if abs(n) < 1e9:
        return f"{n:,.0f} B ({n / (1 << 20):,.1f} MiB)"
    return f"{n:,.0f} B ({n / 1e9:,.2f} GB)"


def _t(s: float) -> str:
    return f"{s * 1e3:,.2f} ms" if s < 10 else f"{s:,.1f} s"


def _explain_tight_fit(shape: ModelShape, gpu: Hardware, work: Workload, p: CapacityPlan) -> list[str]:
    share = p.weight_bytes / p.usable_memory_bytes
    lines = [f"Why only {p.max_concurrent_sequences} sequence(s) of {work.context_len} tokens?"]
    if not p.weights_fit:
        return lines + [f"  The weights alone ({_b(p.weight_bytes)}) exceed the usable {_b(p.usable_memory_bytes)}: "
                        "nothing is left for a KV cache. Use a bigger GPU, quantized weights or tensor parallelism."]
    lines += [
        f"  The weights take {share:.0%} of the usable memory; what is left, {_b(p.kv_budget_bytes)}, must hold every",
        f"  running sequence's keys and values, and each {work.context_len}-token sequence needs {_b(p.kv_bytes_per_sequence)}",
        f"  ({p.kv_bytes_per_token:,} B per token: K and V, for each of {shape.num_layers} layers x {shape.num_kv_heads} KV heads x "
        f"{shape.head_dim} dims x {p.kv_bytes_per_element} B). So only {p.max_concurrent_sequences} fit at once; more users queue.",
        "  Paging removes fragmentation waste but cannot make the cache bigger. To serve more at once: shorten the",
        "  context, store the KV cache in fp8 (half the bytes), use a grouped-query model (fewer KV heads: Llama-3-8B",
        "  has 8 for 32 query heads, 4x less KV per token), quantize the weights, or use a GPU with more memory.",
    ]
    return lines


def render(shape: ModelShape, gpu: Hardware, work: Workload, p: CapacityPlan, memory_note: str | None = None) -> str:
    heads = shape.num_heads or 0
    out = [f"kvserve plan: {shape.name} on {gpu.name}", ""]
    extra = ", ".join(f"{k} {v:,}" for k, v in (("query heads", shape.num_heads), ("hidden", shape.hidden_size),
                                                   ("vocab", shape.vocab_size)) if v)
    out.append(f"  model   {shape.num_layers} layers, {shape.num_kv_heads} KV heads x head_dim {shape.head_dim}, "
               f"{shape.num_params:,} params" + (f" ({extra})" if extra else ""))
    if shape.breakdown is not None:
        b = shape.breakdown
        out.append(f"  params  = embedding {b.embedding:,} + attention {b.attention:,} + MLP {b.mlp:,} + norms {b.norms:,}"
                   f" + lm_head {b.lm_head:,}" + (" (tied to the embedding)" if b.lm_head == 0 else "")
                   + (f" + experts {b.experts:,}" if b.experts else ""))
    if shape.num_experts:
        out.append(f"  MoE     {shape.num_experts} experts per layer, {shape.experts_per_token} per token: "
                   f"{shape.active_params:,} of {shape.num_params:,} params active per token")
    if shape.layer_windows:
        sliding = [w for w in shape.layer_windows if w is not None]
        out.append(f"  windows {len(sliding)} of {shape.num_layers} layers slide over {', '.join(sorted({f'{w:,}' for w in sliding}))} "
                   "keys: they hold at most that many tokens of a sequence")
    out.append(f"  GPU     {gpu.memory_bytes / GIB:g} GiB, {gpu.bandwidth / 1e12:g} TB/s, {gpu.flops / 1e12:g} TFLOP/s dense; "
               f"weights {work.weight_dtype}, KV cache {work.kv_dtype}, memory fraction {work.memory_fraction:g}")
    if memory_note:
        out.append(f"  memory  --gpu-memory {memory_note}")
    out += ["", "Memory"]
    if work.quantization is None:
        out.append(f"  weights         = params x bytes = {shape.num_params:,} x {p.weight_bytes_per_param:g} = {_b(p.weight_bytes)}")
    else:
        out.append(f"  weights         = {work.quantization} projections (codes + scales) + the rest in {work.weight_dtype} "
                   f"= {_b(p.weight_bytes)} ({p.weight_bytes_per_param:.2f} B per param)")
    if p.kv_bytes_per_element == 1:
        out.append(f"  KV per token    = 2 x layers x kv_heads x (head_dim x 1 B + a 4 B fp32 scale) = 2 x {shape.num_layers} x "
                   f"{shape.num_kv_heads} x ({shape.head_dim} + 4) = {_b(p.kv_bytes_per_token)}")
    else:
        out.append(f"  KV per token    = 2 x layers x kv_heads x head_dim x bytes = 2 x {shape.num_layers} x {shape.num_kv_heads} x "
                   f"{shape.head_dim} x {p.kv_bytes_per_element} = {_b(p.kv_bytes_per_token)}")
    if shape.layer_windows:
        held = shape.kv_tokens(work.context_len)
        out.append(f"  KV per sequence = KV per layer-token x sum over layers of min(context, window) = "
                   f"{p.kv_bytes_per_token // shape.num_layers:,} x {held:,} = {_b(p.kv_bytes_per_sequence)}")
    else:
        out.append(f"  KV per sequence = KV per token x context = {p.kv_bytes_per_token:,} x {work.context_len:,} = {_b(p.kv_bytes_per_sequence)}")
    if work.cpu_kv_cache_bytes is None:
        out.append(f"  usable memory   = memory x fraction = {gpu.memory_bytes:,} x {work.memory_fraction:g} = {_b(p.usable_memory_bytes)}")
    else:
        out.append(f"  usable memory   = CPU KV budget + weights at {work.weight_dtype} = {work.cpu_kv_cache_bytes:,} + "
                   f"{p.usable_memory_bytes - work.cpu_kv_cache_bytes:,} = {_b(p.usable_memory_bytes)} (the CPU server)")
    out.append(f"  KV budget       = usable - weights = {p.usable_memory_bytes:,} - {p.weight_bytes:,} = {_b(p.kv_budget_bytes)}")
    out.append(f"  KV blocks       = budget / (block_size x KV per token) = {max(p.kv_budget_bytes, 0):,} / ({work.block_size} x "
               f"{p.kv_bytes_per_token:,}) = {p.num_blocks:,} blocks = {p.num_kv_tokens:,} tokens")
    held = "the blocks a sequence holds (its windows' at most)" if shape.layer_windows else "ceil(context / block_size)"
    out.append(f"  max sequences   = blocks / {held} = {p.num_blocks:,} / {p.blocks_per_sequence:,} = "
               f"{p.max_concurrent_sequences:,} concurrent sequences of {work.context_len:,} tokens")
    fits = "" if p.batch_size <= p.max_concurrent_sequences else f" (more than the {p.max_concurrent_sequences} that fit)"
    out += ["", f"Decode step roofline (batch {p.batch_size}{fits}, every sequence at {work.context_len:,} tokens)"]
    weights = "weights"
    if shape.num_experts:
        weights = "weights read"
        out.append(f"  weights read    = shared + experts touched (1 - (1 - {shape.experts_per_token}/{shape.num_experts})^"
                   f"{p.batch_size} = {p.experts_touched:.0%} of them) = {_b(p.decode_weight_bytes)}")
    if shape.layer_windows:
        out.append(f"  bytes moved     = {weights} + batch x KV per sequence (min(context, window) per layer) = "
                   f"{p.decode_weight_bytes:,} + {p.batch_size} x {p.kv_bytes_per_sequence:,} = {_b(p.decode_step_bytes)}")
    else:
        out.append(f"  bytes moved     = {weights} + batch x context x KV per token = {p.decode_weight_bytes:,} + "
                   f"{p.batch_size} x {work.context_len:,} x {p.kv_bytes_per_token:,} = {_b(p.decode_step_bytes)}")
    out.append("                    (each sequence reads its context's K/V and writes its new token's)")
    out.append(f"  memory time     = bytes / bandwidth = {_t(p.decode_step_memory_s)}")
    ctx_term = "sum over layers of min(context, window)" if shape.layer_windows else "layers x context"
    out.append(f"  compute time    = batch x (2 x dense_params + 2 x vocab x hidden + 4 x heads x head_dim x {ctx_term}) "
               f"/ compute = "
               f"{p.decode_step_flops / 1e12:,.3f} TFLOP / {gpu.flops / 1e12:g} TFLOP/s = {_t(p.decode_step_compute_s)}")
    bound = "memory-bound" if p.decode_step_memory_s >= p.decode_step_compute_s else "compute-bound"
    out.append(f"  TPOT           >= {_t(p.decode_step_lower_bound_s)} ({bound}) -> output <= {p.max_output_tokens_per_s:,.0f} tok/s "
               f"in all, {1 / p.decode_step_lower_bound_s:,.1f} tok/s per sequence")
    out += ["", f"Prefill roofline (one {p.prompt_len:,}-token prompt)"]
    pairs = "the (query, key) pairs of each layer's window" if shape.layer_windows else "layers x n(n+1) / 2"
    out.append(f"  FLOPs           = 2 x dense_params x n + 2 x vocab x hidden + 4 x heads x head_dim x {pairs}")
    out.append(f"                  = {p.prefill_dense_flops / 1e12:,.3f} + {p.prefill_attention_flops / 1e12:,.3f} (attention) "
               f"= {p.prefill_flops / 1e12:,.3f} TFLOP   (dense_params = {shape.dense_params:,}, heads = {heads})")
    pbound = "compute-bound" if p.prefill_compute_s >= p.prefill_memory_s else "memory-bound"
    weights = "weights touched" if shape.num_experts else "weights"
    out.append(f"  bytes moved     = {weights} + n x KV per token (written) = {p.prefill_bytes - p.prompt_len * p.kv_bytes_per_token:,} "
               f"+ {p.prompt_len:,} x {p.kv_bytes_per_token:,} = {_b(p.prefill_bytes)}")
    out.append(f"  TTFT           >= max(FLOPs / compute, bytes / bandwidth) = max({_t(p.prefill_compute_s)}, "
               f"{_t(p.prefill_memory_s)}) = {_t(p.ttft_lower_bound_s)} ({pbound})")
    out += ["", "Bounds ignore activations, CUDA graphs and framework memory: a real server fits fewer and runs slower."]
    if p.max_concurrent_sequences < TIGHT_FIT_SEQUENCES:
        out += [""] + _explain_tight_fit(shape, gpu, work, p)
    return "\n".join(out)


def to_json(shape: ModelShape, gpu: Hardware, work: Workload, p: CapacityPlan, memory_note: str | None = None) -> dict:
    return {
        "gpu_memory_read_as": memory_note,
        "model": {**dataclasses.asdict(shape), "dense_params": shape.dense_params},
        "gpu": dataclasses.asdict(gpu),
        "workload": dataclasses.asdict(work),
        **dataclasses.asdict(p),
        "weights_fit": p.weights_fit,
    }


def run(args: argparse.Namespace) -> int:
    try:
        shape = shape_from_args(args)
        gpu, work = gpu_from_args(args), workload_from_args(args)
        note = None if args.gpu_memory is None else parse_memory(str(args.gpu_memory))[1]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = plan_capacity(shape, gpu, work)
    print(json.dumps(to_json(shape, gpu, work, plan, note), indent=2) if args.json else render(shape, gpu, work, plan, note))
    return 0
