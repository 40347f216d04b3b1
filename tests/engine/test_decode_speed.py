"""`kvserve speed`: every configuration decodes the same prompts at every stream count, the table and JSON carry
one row per (configuration, streams), and `--profile` splits a step into its parts."""

from __future__ import annotations

import json

import pytest

from engine.cli import main


def test_speed_compares_configurations_side_by_side_and_profiles_a_step(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["speed", "--model", tiny_model_dir("llama"), "--configs", "base,int8,int4+fphead",
               "--streams", "1,3", "--input-len", "5", "--output-len", "4", "--rounds", "2", "--profile",
               "--cpu-threads", "1", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    rows = {(x["config"], x["streams"]): x for x in r["results"]}
    assert set(rows) == {(c, s) for c in ("base", "int8", "int4+fphead") for s in (1, 3)}
    assert all(x["output_tok_s"] > 0 and x["tpot_ms"] > 0 and x["tpot_cpu_ms"] > 0 for x in rows.values())
    assert [p["config"] for p in r["profiles"]] == ["base", "int8", "int4+fphead"]
    for p in r["profiles"]:  # the parts never exceed the step they split
        weights = p["matmul_ms"] + p["c_kernels_ms"]  # int8 decodes in one C call: its products are C kernels
        assert 0 < weights <= p["step_ms"] and p["attention_ms"] >= 0
        assert (p["matmul_ms"] + p["attention_ms"] + p["other_ops_ms"] + p["c_kernels_ms"] + p["outside_ops_ms"]
                >= 0.99 * p["step_ms"])
    c_kernels = {p["config"]: p["c_kernels_ms"] for p in r["profiles"]}
    assert c_kernels["base"] == 0 and (c_kernels["int8"] > 0 or not _has_c_compiler())
    text = capsys.readouterr().out
    assert "x base" in text and "int4+fphead" in text and "outside ops" in text


def test_a_configuration_builds_an_engine_with_every_part_of_its_name(tiny_model_dir):
    # `kvserve speed` and `kvserve eval-ppl` build their engines through the same EvalConfig.build
    from engine.config import EngineArgs
    from engine.tools.eval_ppl import parse_config

    llm = parse_config("int4-g64+kv-int8+fphead").build(EngineArgs(model=tiny_model_dir("llama"), device="cpu"))
    mc = llm.engine.runner.config.model
    assert (mc.quantization.method, mc.quantization.group_size, mc.quantization.lm_head) == ("int4", 64, False)
    assert mc.kv_cache.name == "int8"


@pytest.mark.parametrize("flag", [["--quantization", "int8"], ["--kv-cache-dtype", "int8"],
                                  ["--attention-backend", "torch"]])
def test_an_option_the_configurations_set_is_refused_as_a_flag(flag, tiny_model_dir):
    """Each configuration's name sets these: given as a flag, it would be silently replaced."""
    name = flag[0][2:].replace("-", "_")
    with pytest.raises(SystemExit, match=f"^{name}: set it per configuration with --configs"):
        main(["speed", "--model", tiny_model_dir("llama"), "--configs", "base", *flag])


def _has_c_compiler() -> bool:
    from kernels.cpu import CpuKernelUnavailable
    from kernels.cpu.build import find_compiler

    try:
        find_compiler()
        return True
    except CpuKernelUnavailable:
        return False
