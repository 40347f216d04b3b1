"""`kvserve serve` flags -> ServerConfig + EngineArgs, and the access log line."""

from __future__ import annotations

import argparse
import logging
import time

import pytest

from server import cli
from server.config import ServerConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_bind_loopback_and_serve_the_default_model(monkeypatch):
    monkeypatch.delenv("KVSERVE_API_KEY", raising=False)
    args = parse()
    config = ServerConfig.from_cli_args(args)
    assert (config.host, config.port, config.api_key, config.access_log) == ("127.0.0.1", 8000, None, True)
    assert args.model is None  # the engine's default model


def test_the_api_key_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("KVSERVE_API_KEY", "from-env")
    assert ServerConfig.from_cli_args(parse()).api_key == "from-env"
    assert ServerConfig.from_cli_args(parse("--api-key", "from-flag")).api_key == "from-flag"


def test_server_and_engine_flags_parse_together():
    args = parse("--port", "0", "--max-queue", "3", "--shutdown-timeout", "2.5", "--no-access-log",
                 "--max-body-bytes", "2048", "--max-num-seqs", "4", "--served-model-name", "m")
    config = ServerConfig.from_cli_args(args)
    assert (config.port, config.max_queue, config.shutdown_timeout, config.access_log, config.max_body_bytes,
            config.served_model_name) == (0, 3, 2.5, False, 2048, "m")
    assert args.max_num_seqs == 4


@pytest.mark.parametrize("kwargs", [{"port": 70000}, {"max_queue": 0}, {"max_body_bytes": 10}, {"api_key": ""}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ServerConfig(**kwargs)


def test_each_request_logs_one_access_line(client, caplog):
    caplog.set_level(logging.INFO, logger="kvserve.access")
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "ignore_eos": True})
    request_id = r.json()["id"]
    deadline = time.monotonic() + 10  # the line is written just after the last byte is sent
    while not any(request_id in rec.getMessage() for rec in caplog.records):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.01)
    (line,) = [rec.getMessage() for rec in caplog.records if request_id in rec.getMessage()]
    assert '"POST /v1/completions" 200' in line and "prompt_tokens=1 completion_tokens=3" in line
    assert "ttft_s=0." in line and "e2e_s=" in line


def test_chat_template_flag_takes_a_shipped_name_a_file_or_jinja_text(tmp_path, monkeypatch):
    from server.chat_template import SHIPPED

    monkeypatch.delenv("KVSERVE_API_KEY", raising=False)
    shipped = SHIPPED["smollm2-tools"].read_text()
    assert ServerConfig.from_cli_args(parse("--chat-template", "smollm2-tools")).chat_template == shipped
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }}")
    assert ServerConfig.from_cli_args(parse("--chat-template", str(path))).chat_template == path.read_text()
    assert ServerConfig.from_cli_args(parse("--chat-template", "{% for m in messages %}x{% endfor %}")) \
        .chat_template == "{% for m in messages %}x{% endfor %}"


@pytest.mark.parametrize("value, words", [("no/such/file.jinja", "neither a file"),
                                          ("{% for m in messages %}", "not a valid Jinja template")])
def test_a_chat_template_that_cannot_be_used_is_a_startup_error(value, words):
    with pytest.raises(ValueError, match=words):
        ServerConfig.from_cli_args(parse("--chat-template", value))


def test_tool_call_and_reasoning_parser_flags():
    config = ServerConfig.from_cli_args(parse("--tool-call-parser", "llama3_json", "--reasoning-parser", "qwen3"))
    assert (config.tool_call_parser, config.reasoning_parser) == ("llama3_json", "qwen3")
    with pytest.raises(SystemExit):
        parse("--tool-call-parser", "mistral")
    with pytest.raises(ValueError, match="reasoning_parser"):
        ServerConfig(reasoning_parser="o1")
