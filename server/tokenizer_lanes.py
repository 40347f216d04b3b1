"""`TokenizerLanes`: the server's tokenizer work, off the event loop, in two lanes so that small requests
never queue behind large ones.

Tokenizing the longest text a request may carry takes seconds of CPU (the HF fast tokenizer releases the
GIL meanwhile, so the event loop keeps answering). With one tokenizer thread, a 4-token chat request would
wait for every long prompt queued before it. So there are two single-threaded lanes: work on less than
`SMALL_WORK_CHARS` characters goes to the small lane, the rest to the large one; each lane owns its own copy
of the tokenizer (an HF tokenizer must not be used from two threads at once). A third copy is kept for the
event loop itself (`for_loop`): decoding one token id for a logprobs entry, in microseconds.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

SMALL_WORK_CHARS = 16 * 1024


class TokenizerLanes:
    def __init__(self) -> None:
        self._small = ThreadPoolExecutor(1, thread_name_prefix="kvserve-tokenizer-small")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="kvserve-tokenizer-large")
        self._copies: dict[ThreadPoolExecutor, object] = {}
        self.for_loop = None

    async def load(self, tokenizer) -> None:
        """Take copies of `tokenizer` (the engine's; None for a model without one)."""
        loop = asyncio.get_running_loop()
        for lane in (self._small, self._large):
            self._copies[lane] = await loop.run_in_executor(lane, copy.deepcopy, tokenizer)
        self.for_loop = await loop.run_in_executor(self._small, copy.deepcopy, tokenizer)

    @property
    def available(self) -> bool:
        return self.for_loop is not None

    async def run(self, size: int, fn: Callable, *args):
        """`fn(tokenizer, *args)` in the lane for work on `size` characters."""
        lane = self._small if size < SMALL_WORK_CHARS else self._large
        return await asyncio.get_running_loop().run_in_executor(lane, fn, self._copies[lane], *args)

    def shutdown(self) -> None:
        for lane in (self._small, self._large):
            lane.shutdown(wait=False, cancel_futures=True)
