"""Schema fuzzing: schemathesis generates requests from the served OpenAPI document (valid and invalid
ones) for every route of a live server and checks each answer: no 5xx, every status and content type
documented, every JSON body valid against the document, invalid data refused, auth enforced, other
methods 405 with `Allow`. Bounded in examples and time so that it runs in CI.

Not checked: `positive_data_acceptance` (that every schema-valid request succeeds). Some limits cannot be
written in a JSON schema (prompt plus max_tokens within the context window, token ids within the
vocabulary, min_tokens <= max_tokens, top_logprobs needing logprobs); such requests are valid by the
document and correctly refused with a 400."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "ignored_auth", "unsupported_method", "allow_header_conformance", "missing_required_header"]


@pytest.fixture(scope="module")
def fuzz_server(live_server, tiny_llama_dir):
    """A 64-token context: a fuzzed request that generates until the context is full stays short."""
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir, max_model_len=64)).start()
    yield live
    live.stop()


def test_the_document_is_served_behind_the_api_key(server):
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    assert httpx.get(server.url + "/docs").status_code == 401
    with server.client() as c:
        doc = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    assert doc["openapi"].startswith("3.1") and doc["security"] == [{"bearer": []}, {"basic": []}]
    assert set(doc["paths"]) == {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize",
                                 "/v1/models", "/health", "/metrics", "/dashboard", "/dashboard/state",
                                 "/dashboard/dashboard.js", "/dashboard/dashboard.css"}


def test_the_document_states_the_served_model_facts(fuzz_server):
    with fuzz_server.client() as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["CompletionRequest"]["properties"]
    assert request["max_tokens"]["maximum"] == 63
    assert request["model"]["anyOf"][0] == {"const": "tiny-llama"}
    ids = request["prompt"]["anyOf"][1]
    assert ids["maxItems"] == 63 and ids["items"]["maximum"] == 49151
    assert schemas["DetokenizeRequest"]["properties"]["tokens"]["maxItems"] == 64


def test_schemathesis_finds_nothing(fuzz_server, tmp_path):
    server = fuzz_server
    pytest.importorskip("schemathesis")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
           "-H", f"Authorization: Bearer {server.api_key}", "--checks", ",".join(CHECKS),
           "--phases", "examples,fuzzing", "--max-examples", "40", "--seed", "1", "--workers", "1",
           "--request-timeout", "120", "--suppress-health-check", "all",
           "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=800, cwd=tmp_path)  # its cache stays there
    output = done.stdout + done.stderr
    (tmp_path / "output.txt").write_text(output)
    print(output[-5000:])
    assert done.returncode == 0, output[-8000:]
    with server.client() as c:
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


def test_every_route_the_app_serves_is_in_the_document():
    """A route added without a row in `openapi.ROUTES` would be invisible to clients and to the fuzzer.
    FastAPI's own inventory of the app's routes (which cannot see the request bodies the routes parse
    themselves, hence our document) must name the same operations."""
    import warnings

    from server.app import build_app
    from server.config import ServerConfig
    from server.context import ServerContext
    from server.openapi import openapi_document
    from server.routes_dashboard import ASSETS

    app = build_app(ServerContext(ServerConfig(), lambda: None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastAPI's duplicate operation ids for the HEAD twins of GET routes
        inventory = app.openapi()["paths"]
    served = set()
    for path, ops in inventory.items():
        paths = [path.replace("{name}", name) for name in ASSETS] if "{name}" in path else [path]
        served |= {(method, p) for method in ops if method != "head" for p in paths}
    doc = openapi_document("kvserve", "0", secured=True)
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
