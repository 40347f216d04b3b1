"""--max-queue holds under bursts: queue places are reserved (n x prompts sequences) before tokenization.

A real server on the tiny model with --max-queue 4. The engine thread is held between steps (a blocking
`EngineLoop.call`), so nothing leaves the queue while a real concurrent burst (asyncio + httpx) arrives:
exactly the cap is admitted, every other request gets 429 in the OpenAI error envelope, and once the engine
runs again every admitted request completes and the places are all given back (later requests are accepted).
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

CAP = 4


@pytest.fixture(scope="module")
def capped(live_server, tiny_llama_dir):
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir), api_key=None, max_queue=CAP).start()
    yield live
    live.stop()


class EngineGate:
    """Holds the engine thread between two steps until `open()`."""

    def __init__(self, live):
        self.live, self.event = live, threading.Event()

    def __enter__(self):
        async def hold():
            self.live.ctx.engine_loop.call(lambda engine: self.event.wait(60))

        self.live.call_in_loop(hold())
        return self

    def open(self):
        self.event.set()

    def __exit__(self, *exc):
        self.event.set()


def test_a_concurrent_burst_admits_exactly_the_cap_and_429s_the_rest(capped):
    async def burst():
        async with httpx.AsyncClient(base_url=capped.url, timeout=60) as client:
            body = {"prompt": "Once upon a time there was a", "max_tokens": 2, "temperature": 0}
            with EngineGate(capped) as gate:
                tasks = [asyncio.ensure_future(client.post("/v1/completions", json=body)) for _ in range(12)]
                while sum(t.done() for t in tasks) < 12 - CAP:
                    await asyncio.sleep(0.01)
                refused = [t.result() for t in tasks if t.done()]
                assert capped.ctx.engine_loop.num_waiting + capped.ctx._reserved == CAP
                gate.open()
                answers = await asyncio.gather(*tasks)
            return refused, answers

    refused, answers = asyncio.run(burst())
    assert [r.status_code for r in refused] == [429] * (12 - CAP)
    for r in refused:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "queue_full"
        assert r.headers["Retry-After"]
    assert sorted(r.status_code for r in answers) == [200] * CAP + [429] * (12 - CAP)
    assert_all_places_returned(capped)


def test_one_request_counts_n_times_its_prompts(capped):
    with httpx.Client(base_url=capped.url, timeout=60) as client:
        too_big = client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 1})
        assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "prompt"

        async def two_then_three():
            async with httpx.AsyncClient(base_url=capped.url, timeout=60) as c:
                with EngineGate(capped) as gate:
                    first = asyncio.ensure_future(c.post("/v1/completions", json={"prompt": ["a", "b"], "n": 1,
                                                                                  "max_tokens": 1}))
                    while capped.ctx.engine_loop.num_waiting + capped.ctx._reserved < 2:
                        await asyncio.sleep(0.01)
                    second = await c.post("/v1/completions", json={"prompt": "a", "n": 3, "max_tokens": 1})
                    third = asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "a", "n": 2,
                                                                                  "max_tokens": 1}))
                    while capped.ctx.engine_loop.num_waiting + capped.ctx._reserved < 4:
                        await asyncio.sleep(0.01)
                    gate.open()
                    return await first, second, await third

        first, second, third = asyncio.run(two_then_three())
        assert (first.status_code, second.status_code, third.status_code) == (200, 429, 200)
        assert len(first.json()["choices"]) == 2
    assert_all_places_returned(capped)


def test_requests_refused_after_reserving_give_their_places_back(capped):
    with httpx.Client(base_url=capped.url, timeout=60) as client:
        for _ in range(2 * CAP):
            r = client.post("/v1/completions", json={"prompt": [[1, 2], [3, 10**9]], "max_tokens": 1})
            assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert_all_places_returned(capped)


def assert_all_places_returned(live) -> None:
    assert live.ctx._reserved == 0 and live.ctx.engine_loop.num_waiting == 0
    with httpx.Client(base_url=live.url, timeout=60) as client:  # later requests are accepted again
        r = client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == 4
