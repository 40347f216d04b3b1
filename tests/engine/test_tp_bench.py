"""`kvserve bench --compare-tp 1,2`: every size runs the same workload in alternating rounds and the JSON
reports each size's throughput and its ratio to the first size."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.tools.bench import make_workload, parse_tp_sizes


def test_tp_sizes_parse_or_name_the_flag():
    assert parse_tp_sizes("1,2") == [1, 2] and parse_tp_sizes("2") == [2]
    for bad in ("", "1,x", "0,2", "2,2"):
        with pytest.raises(ValueError, match="compare_tp"):
            parse_tp_sizes(bad)


@pytest.mark.slow
def test_compare_tp_writes_both_sizes_and_their_ratio(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tp.json"
    rc = main(["bench", "--model", tiny_model_dir("llama"), "--device", "cpu", "--cpu-threads", "1",
               "--num-prompts", "4", "--input-len", "4:12", "--output-len", "2:6", "--compare-tp", "1,2",
               "--rounds", "2", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())["tensor_parallel"]
    produced = sum(make_workload(4, "4:12", "2:6", seed=0, vocab_size=512).output_lens)
    assert r["1"]["output_tokens"] == r["2"]["output_tokens"] == produced
    assert r["1"]["over_tp1"] == 1.0 and len(r["2"]["over_tp1_rounds"]) == 2 and r["2"]["over_tp1"] > 0
    assert "TP=2 / TP=1 = " in capsys.readouterr().out
