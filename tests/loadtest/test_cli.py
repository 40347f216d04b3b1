"""`kvserve loadtest` through engine.cli.main: flags, the console summary, --out JSON, --plot PNG, --sweep."""

import json

from engine.cli import main

AGGREGATES = ("completed", "failed", "duration_s", "request_throughput", "output_throughput",
              "total_token_throughput", "goodput", "ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
PNG = b"\x89PNG\r\n\x1a\n"


def common(url, *more):
    return ["loadtest", "--base-url", url, "--num-requests", "6", "--input-len", "8:16", "--output-len", "4", *more]


def test_a_run_prints_a_summary_and_writes_json_and_a_plot(fake_server, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    with fake_server(lambda n, body: {"ttft_s": 0.03, "itl_s": 0.01, "status": 503 if n == 2 else 200}) as srv:
        rc = main(common(srv.url, "--goodput", "ttft:500", "tpot:50", "--warmup", "1", "--out", str(out), "--plot", str(png)))
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("Completed requests", "Failed requests", "503: 1", "TTFT", "TPOT", "Goodput", "Prefix-cache hit rate"):
        assert label in text
    data = json.loads(out.read_text())
    for key in AGGREGATES:
        assert key in data
    assert data["ttft_ms"].keys() == {"mean", "median", "p90", "p95", "p99"}
    assert (data["completed"], data["failed"], data["failed_by"]) == (5, 1, {"503": 1})
    assert data["goodput"] == data["good_requests"] / data["duration_s"] and data["good_requests"] == 5
    assert data["slos_ms"] == {"ttft": 500.0, "tpot": 50.0}
    assert data["workload"] == {"kind": "random_tokens", "num_requests": 6, "input_len": "8:16",
                                "output_len": "4", "token_id_range": [100, 30000]}
    assert data["load_shape"] == {"request_rate": "inf", "burstiness": 1.0, "max_concurrency": None,
                                  "warmup_requests": 1, "seed": 0}
    assert data["server_metrics"]["generation_tokens"] == 20
    assert len(data["requests"]) == 6 and {"ttft_s", "tpot_s", "itl_s", "failure"} <= data["requests"][0].keys()
    assert png.read_bytes().startswith(PNG)


def test_a_sweep_writes_one_point_per_value(fake_server, tmp_path, capsys):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    with fake_server(lambda n, body: {"ttft_s": 0.01, "itl_s": 0.005}) as srv:
        rc = main(common(srv.url, "--sweep", "concurrency:1,3", "--out", str(out), "--plot", str(png)))
    assert rc == 0
    assert "concurrency 1" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["sweep"] == {"kind": "concurrency", "values": [1.0, 3.0]}
    assert [p["load_shape"]["max_concurrency"] for p in data["points"]] == [1, 3]
    assert all(p["completed"] == 6 for p in data["points"])
    assert png.read_bytes().startswith(PNG)


def test_a_rate_sweep_accepts_inf(fake_server, tmp_path):
    out = tmp_path / "s.json"
    with fake_server() as srv:
        assert main(common(srv.url, "--sweep", "50,inf", "--endpoint", "chat", "--out", str(out))) == 0
    data = json.loads(out.read_text())
    assert [p["load_shape"]["request_rate"] for p in data["points"]] == [50.0, "inf"]
    assert data["points"][0]["workload"]["kind"] == "random_words"


def test_the_prompt_file_and_shared_prefix_flags_reach_the_workload(fake_server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello world", "max_tokens": 2}\n')
    out = tmp_path / "r.json"
    with fake_server() as srv:
        assert main(common(srv.url, "--dataset", str(prompts), "--out", str(out))) == 0
        assert srv.requests[0]["prompt"] == "hello world" and srv.requests[0]["max_tokens"] == 2
        assert main(common(srv.url, "--shared-prefix-groups", "2", "--shared-prefix-len", "32", "--out", str(out))) == 0
        assert len(srv.requests[-1]["prompt"]) >= 32 + 8
    assert json.loads(out.read_text())["workload"]["shared_prefix_groups"] == 2


def test_usage_errors_exit_with_2(tmp_path, closed_port, capsys):
    assert main(["loadtest", "--base-url", "ftp://x"]) == 2
    assert "base_url" in capsys.readouterr().err
    assert main(["loadtest", "--base-url", f"http://127.0.0.1:{closed_port}"]) == 2
    assert "/v1/models" in capsys.readouterr().err
    missing = tmp_path / "none.jsonl"
    assert main(["loadtest", "--dataset", str(missing)]) == 2


def test_a_run_where_nothing_completes_exits_with_1(fake_server):
    with fake_server(lambda n, body: {"status": 500}) as srv:
        assert main(common(srv.url, "--no-metrics")) == 1
