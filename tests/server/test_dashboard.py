"""/dashboard and /dashboard/state over HTTP: served by kvserve itself, behind the API key (Bearer or, for a
browser, Basic), the state taken on the engine thread and exact for a known cache. The page in a real
browser: tests/server/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import re
import threading

import pytest

pytestmark = pytest.mark.timeout(120)

KEY = "dash-key"


@pytest.fixture(scope="module")
def live(live_server, tiny_llama_dir):
    LiveServer, factory = live_server
    server = LiveServer(factory(tiny_llama_dir, num_kv_blocks=64), api_key=KEY).start()
    yield server
    server.stop()


def basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_page_and_its_assets_need_the_key_and_a_browser_is_asked_for_basic_credentials(live):
    import httpx

    for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/state"):
        r = httpx.get(live.url + path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="kvserve"'
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(live.url + path, headers=basic("wrong")).status_code == 401
    assert httpx.get(live.url + "/v1/models").headers["www-authenticate"] == "Bearer"
    page = httpx.get(live.url + "/dashboard", headers=basic(KEY))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # everything the page loads is served by kvserve itself: no CDN, no other origin
    assert set(re.findall(r'(?:src|href)="([^"]+)"', page.text)) == {"/dashboard/dashboard.css", "/dashboard/dashboard.js"}
    js = httpx.get(live.url + "/dashboard/dashboard.js", headers={"Authorization": f"Bearer {KEY}"})
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "http" not in js.text.replace(
        "http://www.w3.org/2000/svg", "")
    assert httpx.get(live.url + "/dashboard/nope.js", headers=basic(KEY)).status_code == 404


def test_basic_credentials_work_on_the_api_too(live):
    import httpx

    assert httpx.get(live.url + "/v1/models", headers=basic(KEY, user="")).status_code == 200
    assert httpx.get(live.url + "/v1/models", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_the_state_is_exact_for_a_known_cache(live):
    with live.client() as c:
        # a finished 48-token prompt: three full blocks stay behind as cached-free; its one output token is
        # never stored
        r = c.post("/v1/completions", json={"prompt": list(range(200, 248)), "max_tokens": 1})
        assert r.status_code == 200
        state = c.get("/dashboard/state")
        assert state.status_code == 200 and state.headers["cache-control"] == "no-store"
        s = state.json()
    cache = s["cache"]
    assert (cache["num_blocks"], cache["block_size"], cache["stride"], cache["exact"]) == (64, 16, 1, True)
    assert (cache["free"], cache["used"], cache["cached_free"], cache["shared"]) == (64, 0, 3, 0)
    assert cache["cells"].count("c") == 3 and len(cache["owners"]) == 64
    assert (cache["num_running"], cache["num_waiting"], cache["running"], cache["waiting"]) == (0, 0, [], [])
    recent = s["recent"]
    assert recent["ttft_s"]["count"] == 1 and recent["by_kind"]["prefill"]["steps"] == 1
    assert recent["points"] and recent["points"][0]["kind"] == "prefill" and recent["points"][0]["ai"] > 0
    assert s["model"] == "tiny-llama" and s["phase"] == "ready"


def test_the_snapshot_runs_on_the_engine_thread(live):
    def where(engine):
        return threading.current_thread().name, engine.kv.pool.num_blocks

    assert live.call_in_loop(on_engine_thread(live, where)) == ("kvserve-engine", 64)


def test_an_error_in_a_call_reaches_the_caller_and_the_engine_keeps_serving(live):
    def boom(engine):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        live.call_in_loop(on_engine_thread(live, boom))
    with live.client() as c:
        assert c.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 2}).status_code == 200


async def on_engine_thread(live, fn):
    """Run on the server's event loop, as the dashboard route does."""
    return await live.ctx.engine_loop.call(fn)
