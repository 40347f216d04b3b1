"""Engine configuration: what the user asks for (`EngineArgs`) and what the engine runs with (`EngineConfig`).

`EngineArgs` is flat and mirrors the offline `LLM(...)` keywords and the CLI flags (built in one place,
`add_cli_args` / `from_cli_args`). `EngineArgs.resolve()` finds the model, reads its config and fixes
device, dtype and context length, giving frozen per-concern configs. The KV-cache block count is decided
later, by the model runner, once weights are loaded and memory can be measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .quantization.checkpoint_formats import declared_format
from .quantization.config import (KV_CACHE_DTYPES, LM_HEAD_METHODS, QUANT_METHODS, KVCacheDtype, WeightQuantConfig,
                                   kv_cache_dtype)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16}
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")


@dataclass
class EngineArgs:
    """Everything a user can set. Defaults are the offline API's defaults."""

    model: str | None = None
    model_config: str | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    load_format: str = "auto"
    seed: int = 0
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gb: float = 2.0
    attention_backend: str = "auto"
    enforce_eager: bool = False
    cpu_threads: int | None = None
    tensor_parallel_size: int = 1
    distributed_timeout: float = 120.0
    quantization: str | None = None
    quantization_group_size: int | None = None
    quantize_lm_head: bool = True  # with int8/int4 weights, the LM head becomes int8 too
    kv_cache_dtype: str = "auto"
    async_scheduling: bool | None = None  # None: on for CUDA with one rank, off on the CPU
    speculative_config: Any = None  # None, a dict (vLLM's shape) or a SpeculativeConfig (engine.spec_decode)

    def __post_init__(self) -> None:
        from .spec_decode.config import SpeculativeConfig

        self.speculative_config = SpeculativeConfig.from_value(self.speculative_config)
        if self.block_size < 1 or self.block_size % 16 and self.block_size not in (1, 2, 4, 8):
            raise ValueError(f"block_size: must be 1, 2, 4, 8 or a multiple of 16, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks: must be >= 1, got {self.num_kv_blocks}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs: must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens: must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len: must be >= 2, got {self.max_model_len}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format: must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype: must be auto or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend: must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads: must be >= 1, got {self.cpu_threads}")
        if self.cpu_kv_cache_gb <= 0:
            raise ValueError(f"cpu_kv_cache_gb: must be > 0, got {self.cpu_kv_cache_gb}")
        if isinstance(self.tensor_parallel_size, bool) or not isinstance(self.tensor_parallel_size, int) \
                or self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size: must be an integer >= 1, got {self.tensor_parallel_size!r}")
        if not self.distributed_timeout > 0:
            raise ValueError(f"distributed_timeout: must be > 0 seconds, got {self.distributed_timeout}")
        if self.model is not None and self.model_config is not None:
            raise ValueError("model_config: give either model or model_config, not both")
        if self.quantization is not None:
            WeightQuantConfig(self.quantization, self.quantization_group_size or 32)  # raises naming the parameter
        if self.quantization_group_size is not None and self.quantization != "int4":
            raise ValueError(f"quantization_group_size: only applies with quantization='int4', "
                             f"got quantization={self.quantization!r}")
        if not self.quantize_lm_head and self.quantization not in LM_HEAD_METHODS:
            raise ValueError(f"quantize_lm_head: only {LM_HEAD_METHODS} quantize the LM head, so turning it off "
                             f"means nothing with quantization={self.quantization!r}")
        kv_cache_dtype(self.kv_cache_dtype)
        if self.model_config is not None and self.load_format not in ("auto", "dummy"):
            raise ValueError("load_format: a named model_config has no weights; use load_format='dummy'")

    # ---- CLI -------------------------------------------------------------------------------------------
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        g = parser.add_argument_group("engine")
        g.add_argument("--model", default=None, help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
        g.add_argument("--model-config", default=None, help="a named shape (random weights), e.g. llama-3.1-8b")
        g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
        g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        g.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
        g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
        g.add_argument("--num-kv-blocks", type=int, default=None, help="KV blocks (default: sized from memory)")
        g.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in one batch")
        g.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
        g.add_argument("--max-model-len", type=int, default=None, help="context window (default: the model's)")
        g.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
                       help="disable prefix caching")
        g.add_argument("--load-format", default="auto", choices=LOAD_FORMATS)
        if "--seed" not in parser._option_string_actions:  # a subcommand may define its own --seed
            g.add_argument("--seed", type=int, default=0, help="seed of the engine's default random generator")
        g.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of GPU memory to use")
        g.add_argument("--cpu-kv-cache-gb", type=float, default=2.0, help="KV-cache budget on the CPU (GiB)")
        g.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS)
        g.add_argument("--enforce-eager", action="store_true",
                       help="never use CUDA graphs (GPU) or the one-call C decode step (CPU): every step runs "
                            "the model's forward")
        g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                       help="schedule and prepare step N+1 while the device runs step N (default: on for CUDA, "
                            "off on the CPU, where the device is the host and nothing would overlap)")
        g.add_argument("--cpu-threads", type=int, default=None,
                       help="torch intra-op threads on the CPU (default: torch's choice, one per core); on a "
                            "machine shared with other busy processes fewer threads can be much faster")
        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                       help="shard the model over this many worker processes (one per GPU on CUDA)")
        g.add_argument("--distributed-timeout", type=float, default=120.0,
                       help="seconds a tensor-parallel rank waits for the others before the engine fails")
        g.add_argument("--quantization", "-q", default=None, choices=QUANT_METHODS,
                       help="quantize the weights at load time: int8 (per output channel), int4 (grouped), "
                            "fp8 (weights and activations; CUDA sm_89+), w8a8 (int8 weights and activations; "
                            "CPU); or run pre-quantized int4 weights: gguf (a GGUF file's Q4 blocks), awq / gptq / "
                            "compressed-tensors (chosen by themselves for such a checkpoint)")
        g.add_argument("--quantization-group-size", type=int, default=None,
                       help="int4: input columns per scale/zero group, 32/64/128/256 (default 32: the most "
                            "accurate; larger groups store fewer scales)")
        g.add_argument("--quantize-lm-head", action=argparse.BooleanOptionalAction, default=True,
                       help="with --quantization int8/int4/w8a8, also store the LM head (tied embedding or not) in "
                            "int8 per output row (default on: it is ~20%% of SmolLM2's bytes per token)")
        g.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                       help="KV-cache storage: auto (the model's dtype), int8, fp8_e4m3 or fp8_e5m2 "
                            "(8-bit values with one fp32 scale per token and KV head)")
        s = parser.add_argument_group("speculative decoding")
        s.add_argument("--speculative-method", default=None, choices=("ngram", "draft"),
                       help="propose tokens and verify several per forward pass (ngram: prompt lookup; "
                            "draft: a smaller model sharing the tokenizer)")
        s.add_argument("--num-speculative-tokens", type=int, default=None, help="tokens proposed per step (4)")
        s.add_argument("--ngram-prompt-lookup-min", type=int, default=None, help="shortest n-gram matched (2)")
        s.add_argument("--ngram-prompt-lookup-max", type=int, default=None, help="longest n-gram matched (4)")
        s.add_argument("--speculative-disable-by-batch-size", type=int, default=None,
                       help="no drafts in a step with more running sequences than this (8)")
        s.add_argument("--speculative-model", default=None,
                       help="the draft method's model (HF directory, .gguf or name; default: the target model)")
        s.add_argument("--speculative-draft-layers", type=int, default=None,
                       help="the draft runs only the first N layers of its model, plus its final norm and head "
                            "(self-speculation by early exit)")
        return parser

    _SPEC_FLAGS = {"num_speculative_tokens": "num_speculative_tokens", "ngram_prompt_lookup_min": "prompt_lookup_min",
                   "ngram_prompt_lookup_max": "prompt_lookup_max",
                   "speculative_disable_by_batch_size": "disable_by_batch_size", "speculative_model": "model",
                   "speculative_draft_layers": "draft_layers"}

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        given = {key: getattr(args, flag) for flag, key in cls._SPEC_FLAGS.items() if getattr(args, flag, None) is not None}
        method = getattr(args, "speculative_method", None)
        if method is not None:
            values["speculative_config"] = {"method": method, **given}
        elif given:
            flag = next(f for f, key in cls._SPEC_FLAGS.items() if key in given)
            raise ValueError(f"{flag}: needs --speculative-method")
        return cls(**values)

    # ---- resolution -------------------------------------------------------------------------------------
    def resolve(self) -> "EngineConfig":
        from .models.resolve import DEFAULT_MODEL_NAME, resolve_model
        from .models.shapes import named_config
        from transformers import AutoConfig

        if self.model_config is not None:
            hf_config = named_config(self.model_config)
            name, path, tokenizer_path, load_format = self.model_config, None, self.tokenizer, "dummy"
        else:
            src = resolve_model(self.model)
            hf_config = AutoConfig.from_pretrained(src.path)
            name = src.name if self.model is not None else DEFAULT_MODEL_NAME
            path = src.path
            tokenizer_path = self.tokenizer or (str(src.path) if src.has_tokenizer else None)
            load_format = "safetensors" if self.load_format in ("auto", "gguf") else self.load_format
        device = self._resolve_device()
        dtype = self._resolve_dtype(hf_config, device)
        model = ModelConfig.from_hf(hf_config, name=name, path=path, tokenizer=tokenizer_path,
                                    load_format=load_format, dtype=dtype, max_model_len=self.max_model_len,
                                    kv_cache=kv_cache_dtype(self.kv_cache_dtype))
        model = dataclasses.replace(model, quantization=self._resolve_quantization(model, device))
        cache = CacheConfig(block_size=self.block_size, num_kv_blocks=self.num_kv_blocks,
                            enable_prefix_caching=self.enable_prefix_caching,
                            gpu_memory_utilization=self.gpu_memory_utilization,
                            cpu_kv_cache_bytes=int(self.cpu_kv_cache_gb * 2**30))
        sched = SchedulerConfig(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                                max_model_len=model.max_model_len)
        backend = self.attention_backend
        if backend == "auto":
            backend = "triton" if device.type == "cuda" else "cpu"
        if backend == "cpu" and device.type != "cpu":
            raise ValueError(f"attention_backend: cpu (the C decode kernel) runs on the CPU; the device is {device}; "
                             "use triton or torch there")
        parallel = self._resolve_parallel(model, device)
        cpu_threads = self.cpu_threads
        if cpu_threads is None and device.type == "cpu" and parallel.tensor_parallel_size > 1:
            # N ranks share the cores: torch's default (one thread per core in every rank) oversubscribes them
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            cpu_threads = max(1, cores // parallel.tensor_parallel_size)
        if self.async_scheduling and parallel.tensor_parallel_size > 1:
            # ranks > 0 never see rank 0's samples on their device, so they cannot take a pending token there
            raise ValueError("async_scheduling: not supported with tensor_parallel_size > 1")
        spec = self.speculative_config
        if spec is not None and self.async_scheduling:
            # the next step's drafts and its 1 + k tokens depend on how many of this step's drafts are accepted
            raise ValueError("speculative_config: not supported with async_scheduling; leave async_scheduling unset "
                             "or False")
        if spec is not None and parallel.tensor_parallel_size > 1:
            # the step codec does not carry drafts, and a draft model would run unsharded on rank 0 only
            raise ValueError(f"speculative_config: method {spec.method!r} is not supported with "
                             "tensor_parallel_size > 1 yet")
        draft = None
        if spec is not None and spec.method == "draft":
            from .spec_decode.draft_config import resolve_draft_model

            draft = resolve_draft_model(spec, self.model, model, device)
        async_scheduling = (device.type == "cuda" and parallel.tensor_parallel_size == 1 and spec is None
                            if self.async_scheduling is None else self.async_scheduling)
        return EngineConfig(model=model, cache=cache, scheduler=sched, device=device, seed=self.seed,
                            attention_backend=backend, enforce_eager=self.enforce_eager,
                            cpu_threads=cpu_threads, parallel=parallel, async_scheduling=async_scheduling,
                            speculative=spec, draft_model=draft)

    def _resolve_parallel(self, model: "ModelConfig", device: torch.device) -> "ParallelConfig":
        from .distributed.partition import plan_for_model

        tp = self.tensor_parallel_size
        plan_for_model(model, tp)  # raises a ValueError naming tensor_parallel_size for shapes it cannot split
        if device.type == "cuda" and tp > 1:
            first = device.index or 0
            if first + tp > torch.cuda.device_count():
                raise ValueError(f"tensor_parallel_size: {tp} ranks from cuda:{first} need {first + tp} GPUs, "
                                 f"torch sees {torch.cuda.device_count()}")
        return ParallelConfig(tensor_parallel_size=tp, distributed_timeout_s=float(self.distributed_timeout))

    def _resolve_quantization(self, model: "ModelConfig", device: torch.device) -> WeightQuantConfig | None:
        """The weight format, its int4 group size checked against every projection input of every rank."""
        prepacked = declared_format(model.hf_config, self.quantization)
        if prepacked is not None:  # a pre-quantized checkpoint decides its format
            from .quantization.prepacked import prepacked_config

            return prepacked_config(model, prepacked, self.tensor_parallel_size)
        if self.quantization is None:
            return None
        if self.quantization == "fp8":
            from .quantization.fp8 import check_fp8_device

            check_fp8_device(device)
        if self.quantization == "w8a8":
            from .quantization.w8a8 import check_w8a8_device

            check_w8a8_device(device)
        if self.quantization == "gguf":
            from .quantization.gguf_int4 import gguf_int4_config

            return gguf_int4_config(model, self.tensor_parallel_size)
        from .distributed.partition import plan_for_model

        shards = plan_for_model(model, self.tensor_parallel_size)
        inputs = {"hidden size": model.hidden_size}
        for s in shards:
            inputs[f"rank {s.rank}'s query heads x head_dim"] = s.num_heads * model.head_dim
            inputs[f"rank {s.rank}'s MLP width"] = s.intermediate_size
        if self.tensor_parallel_size == 1:
            inputs = {"hidden size": model.hidden_size, "query heads x head_dim": model.num_heads * model.head_dim,
                      "MLP width": shards[0].intermediate_size}
        # Default 32, the finest group and llama.cpp's Q4 block: the coarsest group that tiles (64 for SmolLM2)
        # costs +43% perplexity on the default model, whose published weights are Q4_1 blocks of 32 that a
        # 32-group requantizes almost exactly (docs/benchmarks.md, quantization accuracy).
        group = self.quantization_group_size or 32
        cfg = WeightQuantConfig(self.quantization, group, lm_head=self.quantize_lm_head)
        cfg.check_shapes(inputs)
        return cfg

    def _resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for but torch sees no CUDA device")
        return device

    def _resolve_dtype(self, hf_config: Any, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            dtype = _DTYPES[self.dtype]
        elif device.type == "cpu":
            dtype = torch.float32  # CPU half-precision matmuls are slow and the oracle is fp32
        else:
            dtype = torch.bfloat16
        if device.type == "cpu" and dtype == torch.float16:
            raise ValueError("dtype: float16 is not supported on the CPU; use float32 or bfloat16")
        return dtype


EIGHT_BIT_KV_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")  # whose attention passes an 8-bit cache's scales


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the engine needs, read once from the transformers config."""

    name: str
    path: Path | None
    tokenizer: str | None
    load_format: str
    dtype: torch.dtype
    hf_config: Any = field(repr=False, compare=False)
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    kv_cache: KVCacheDtype = KVCacheDtype("auto", None, 0.0)  # how the paged cache stores K and V
    quantization: WeightQuantConfig | None = None  # the weights' format (None: the model's dtype)

    # Each layer's sliding window (None = full attention), already normalised against max_model_len: a window
    # at least as long as the context is no window. Empty = every layer full.
    layer_windows: tuple[int | None, ...] = ()

    @classmethod
    def from_hf(cls, hf, *, name, path, tokenizer, load_format, dtype, max_model_len,
                kv_cache: KVCacheDtype | None = None) -> "ModelConfig":
        from .core.kv_groups import normalize_windows
        from .models.arch import check_supported, layer_windows, text_config

        outer, hf = hf, text_config(hf)
        model_type = check_supported(hf)
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        limit = int(getattr(hf, "max_position_embeddings", 0) or 2048)
        if max_model_len is None:
            max_model_len = limit
        eos_ids = _eos_ids(outer.eos_token_id if getattr(outer, "eos_token_id", None) is not None else hf.eos_token_id)
        if path is not None and (Path(path) / "generation_config.json").is_file():
            # what transformers' generate stops on (chat models list their end-of-turn token here)
            gen = json.loads((Path(path) / "generation_config.json").read_text())
            eos_ids += tuple(i for i in _eos_ids(gen.get("eos_token_id")) if i not in eos_ids)
        windows = normalize_windows(layer_windows(hf), int(max_model_len))
        if kv_cache is not None and kv_cache.quantized and (model_type not in EIGHT_BIT_KV_ARCHITECTURES
                                                             or any(w is not None for w in windows)):
            # the 8-bit torch path has neither sliding windows nor soft-capping, and only these families'
            # attention passes the scales on
            raise ValueError(f"kv_cache_dtype: an 8-bit KV cache is supported for {', '.join(EIGHT_BIT_KV_ARCHITECTURES)} "
                             f"models without sliding windows, not for this {model_type} model")
        return cls(name=name, path=path, tokenizer=tokenizer, load_format=load_format, dtype=dtype, hf_config=hf,
                   architecture=model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
                   num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
                   num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
                   head_dim=head_dim, max_model_len=int(max_model_len), eos_token_ids=eos_ids,
                   layer_windows=windows, kv_cache=kv_cache or kv_cache_dtype("auto"))

    @functools.cached_property
    def kv_groups(self):
        """The KV-cache groups (`engine.core.kv_groups`): one for a model whose layers all share one window."""
        from .core.kv_groups import kv_cache_groups

        return kv_cache_groups(self.layer_windows or (None,) * self.num_layers)

    @property
    def group_windows(self) -> tuple[int | None, ...]:
        """Each KV-cache group's window, in group order (what the KV-cache manager needs)."""
        return tuple(g.window for g in self.kv_groups)

    @property
    def num_kv_tensors(self) -> int:
        """K/V tensor pairs the runner allocates: one per layer, or one per layer of a group when layers are
        grouped by window (a block then holds that many layers of one group)."""
        from .core.kv_groups import group_size

        return group_size(self.kv_groups)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of one token slot of one block: 2 (K and V) x the layers a block serves (every layer, or one
        group's) x kv_heads x head_dim x bytes per element (+ the 8-bit formats' scales)."""
        return self.kv_cache.bytes_per_token(self.num_kv_tensors, self.num_kv_heads, self.head_dim, self.dtype)

    @property
    def kv_storage_name(self) -> str:
        """How the cache stores K and V, by name: the 8-bit format, or the model's dtype (`float32`, ...)."""
        return self.kv_cache.name if self.kv_cache.quantized else str(self.dtype).removeprefix("torch.")


def _eos_ids(eos) -> tuple[int, ...]:
    return tuple(int(i) for i in eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))


@dataclass(frozen=True)
class CacheConfig:
    block_size: int
    num_kv_blocks: int | None
    enable_prefix_caching: bool
    gpu_memory_utilization: float
    cpu_kv_cache_bytes: int


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor parallelism: how many ranks (processes) share the model, and how long a rank waits for the
    others in a collective (or at startup) before the engine fails instead of hanging."""

    tensor_parallel_size: int = 1
    distributed_timeout_s: float = 120.0


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    device: torch.device
    seed: int
    attention_backend: str
    enforce_eager: bool
    cpu_threads: int | None = None
    parallel: ParallelConfig = ParallelConfig()
    async_scheduling: bool = False  # launch step N+1 before step N's tokens reach the engine (engine.engine)
    speculative: Any = None  # a SpeculativeConfig, or None: no speculative decoding (engine.spec_decode)
    draft_model: ModelConfig | None = None  # speculative method "draft": the draft's resolved model
