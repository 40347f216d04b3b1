"""`EngineConfig` as JSON, for the one message that starts a worker process (no pickle on any channel).

The config is frozen dataclasses of plain values plus a few typed ones, each written as a tagged object:
a torch dtype or device, a path, a tuple, and the transformers model config (its `to_dict()`, rebuilt
with the config class of its `model_type`). A field added to a config dataclass later travels as well, as
long as its value is one of these kinds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from .. import config as config_module
from ..quantization import config as quant_config

_DATACLASSES = {cls.__name__: cls for cls in (config_module.EngineConfig, config_module.ModelConfig,
                                              config_module.CacheConfig, config_module.SchedulerConfig,
                                              config_module.ParallelConfig, quant_config.WeightQuantConfig,
                                              quant_config.KVCacheDtype)}


def _to_json(v: Any) -> Any:
    if hasattr(v, "to_dict") and hasattr(v, "model_type"):  # a transformers PretrainedConfig (a dataclass too)
        return {"$hf_config": v.to_dict()}
    if dataclasses.is_dataclass(v):
        return {"$dataclass": type(v).__name__,
                "fields": {f.name: _to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, torch.dtype):
        return {"$dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"$device": str(v)}
    if isinstance(v, Path):
        return {"$path": str(v)}
    if isinstance(v, tuple):
        return {"$tuple": [_to_json(x) for x in v]}
    if isinstance(v, list):
        return [_to_json(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot send a {type(v).__name__} to a worker")


def _from_json(v: Any) -> Any:
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "$dataclass" in v:
        cls = _DATACLASSES[v["$dataclass"]]
        return cls(**{k: _from_json(x) for k, x in v["fields"].items()})
    if "$dtype" in v:
        dtype = getattr(torch, v["$dtype"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"not a dtype: {v['$dtype']!r}")
        return dtype
    if "$device" in v:
        return torch.device(v["$device"])
    if "$path" in v:
        return Path(v["$path"])
    if "$tuple" in v:
        return tuple(_from_json(x) for x in v["$tuple"])
    if "$hf_config" in v:
        from transformers import CONFIG_MAPPING

        d = dict(v["$hf_config"])
        return CONFIG_MAPPING[d["model_type"]].from_dict(d)
    raise ValueError(f"unknown tagged value {sorted(v)}")


def config_to_json(config: config_module.EngineConfig) -> dict:
    """A JSON-serialisable object (for embedding in a larger message)."""
    return _to_json(config)


def config_from_json(obj: dict) -> config_module.EngineConfig:
    config = _from_json(obj)
    if not isinstance(config, config_module.EngineConfig):
        raise ValueError("not an engine config")
    return config


def encode_config(config: config_module.EngineConfig) -> bytes:
    return json.dumps(config_to_json(config)).encode()


def decode_config(data: bytes) -> config_module.EngineConfig:
    return config_from_json(json.loads(data))
