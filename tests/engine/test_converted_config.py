"""The converted default-model directory is a plain HF directory: no GGUF quantization_config, an
`architectures` entry (vLLM refuses it otherwise), and older conversions are repaired in place."""

from __future__ import annotations

import json
import shutil

from transformers import AutoConfig

from engine.models.resolve import repair_config, resolve_model


def test_the_default_models_directory_has_no_gguf_quantization_config_and_names_its_class():
    cfg = json.loads((resolve_model(None).path / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["architectures"] == ["LlamaForCausalLM"]


def test_an_older_conversion_is_repaired_and_still_loads(tmp_path):
    src = resolve_model(None).path / "config.json"
    old = json.loads(src.read_text())
    old.pop("architectures", None)
    old["quantization_config"] = {"dequantize": False, "quant_method": "gguf"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert repair_config(tmp_path) is True
    fixed = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in fixed and fixed["architectures"] == ["LlamaForCausalLM"]
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == old["hidden_size"]
    assert repair_config(tmp_path) is False  # idempotent
