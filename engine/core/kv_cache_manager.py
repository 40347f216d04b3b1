"""Which blocks each request holds: allocation per step, prefix-cache lookup, sliding-window release, freeing.

The manager maps request id -> block table and decides whether a step's tokens fit. It hashes a request's
full blocks with a chained hash (a block's hash covers its tokens and, through its parent's hash, every token
before it), so equal hashes mean equal prefixes, and asks the block pool for cached blocks by hash.

A model may have several KV-cache groups (`engine.core.kv_groups`): one per kind of layer, each with its own
logical block table, all drawing blocks from one pool. A request's table interleaves them (logical block i of
group g is entry i * G + g); with one group it is the plain list of block ids.

Sliding-window groups release blocks while the request runs. A step that starts computing at position c reads,
in a group of window W, no key older than c - W + 1, and neither will any later step; every block wholly before
that is freed at the start of `allocate_slots` and its table entry becomes `NULL_BLOCK_ID`:

    window 8, block_size 4, c = 14:   keys 7..13 are still read      table  [--, 5, 6, 9]
                                      block 0 (keys 0..3) is freed           ^ NULL_BLOCK_ID

A worker that learned the freed id earlier keeps it in its copy of the table; the attention kernels never read
an entry outside the window, so it does not matter that the block now belongs to someone else. A freed block
keeps its cache hash like any other freed block: until it is reused, a later request with the same prefix can
still hit it. A prefix hit in a window group needs only the blocks the first computed token reads (the last
window before it), and skips the older ones (`NULL_BLOCK_ID`), so hits survive the release of old blocks.
"""

from __future__ import annotations

import hashlib
from array import array

from .block_pool import BlockPool, KVBlock
from .kv_groups import first_needed_block
from .request import Request

NULL_BLOCK_ID = -1  # a table entry whose block was released (or never needed): never read


def hash_block(parent_hash: bytes | None, token_ids: list[int], salt: str | None = None) -> bytes:
    """The prefix-cache key of one full block: blake2b over the parent's hash and the block's token ids.
    A salt (per tenant) goes into the first block's hash only, and so into every hash after it."""
    h = hashlib.blake2b(digest_size=16)
    if parent_hash is None:
        h.update(b"kvserve-root")
        if salt:
            h.update(salt.encode())
    else:
        h.update(parent_hash)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True,
                 windows: tuple[int | None, ...] = (None,), max_chunk_tokens: int | None = None):
        """`windows`: one entry per KV-cache group, its sliding window (None = full attention).
        `max_chunk_tokens`: the most tokens one step computes for a request (the scheduler's token budget),
        which bounds what a window group holds at once (`num_blocks_for`)."""
        if not windows:
            raise ValueError("windows: at least one KV-cache group")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.windows = tuple(windows)
        self.num_groups = len(self.windows)
        self.has_windows = any(w is not None for w in self.windows)
        self.max_chunk_tokens = max_chunk_tokens
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVBlock | None]] = {}  # interleaved; None where released
        self.req_to_block_ids: dict[str, list[int]] = {}  # the block table, kept in step with req_to_blocks
        self._num_cached_blocks: dict[str, int] = {}  # logical blocks already registered in the cache
        self._num_released: dict[str, list[int]] = {}  # per group: leading logical blocks released

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def _update_hashes(self, request: Request) -> list[bytes]:
        """Extend the request's block hashes to cover every full block of its current tokens."""
        hashes, bs, tokens = request.block_hashes, self.block_size, request.all_token_ids
        while len(hashes) < len(tokens) // bs:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block(parent, tokens[i * bs:(i + 1) * bs], request.cache_salt))
        return hashes

    def cache_key(self, block_hash: bytes, group: int) -> bytes:
        """The pool's cache key of a block of `group`: the same tokens give different K/V in another group's
        layers. Group 0's key is the plain hash."""
        return block_hash if group == 0 else block_hash + group.to_bytes(2, "little")

    # ---- prefix-cache lookup ----------------------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock | None], int]:
        """The longest prefix of the request's full blocks that the prefix cache can serve, as table entries
        (interleaved over the groups; None where a window group does not need the block), and the number of
        tokens they cover. At least one token is always left to compute (the step that computes the last
        token produces the logits to sample from)."""
        if not self.enable_caching:
            return [], 0
        hashes = self._update_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        if self.num_groups == 1 and self.windows[0] is None:
            hits: list[KVBlock | None] = []
            for block_hash in hashes[:max_blocks]:
                block = self.pool.get_cached_block(block_hash)
                if block is None:
                    break
                hits.append(block)
            return hits, len(hits) * self.block_size
        n = self._longest_hit(hashes[:max_blocks])
        hits = []
        starts = [first_needed_block(n * self.block_size, w, self.block_size) for w in self.windows]
        for i in range(n):
            for g in range(self.num_groups):
                hits.append(self.pool.get_cached_block(self.cache_key(hashes[i], g)) if i >= starts[g] else None)
        return hits, n * self.block_size

    def _longest_hit(self, hashes: list[bytes]) -> int:
        """The most leading logical blocks n such that every group has, cached, each block the token at
        position n * block_size reads: all of blocks 0..n-1 in a full group, the last window's in a window
        group (so a window group can hit a prefix whose oldest blocks are long gone)."""
        n_max = len(hashes)
        runs = []  # per window group: run[i] = cached blocks in a row ending at block i
        for g, window in enumerate(self.windows):
            if window is None:
                n = 0
                while n < n_max and self.pool.get_cached_block(self.cache_key(hashes[n], g)) is not None:
                    n += 1
                n_max = n
        for g, window in enumerate(self.windows):
            if window is not None:
                run, length = [], 0
                for i in range(n_max):
                    length = length + 1 if self.pool.get_cached_block(self.cache_key(hashes[i], g)) else 0
                    run.append(length)
                runs.append((window, run))
        for n in range(n_max, 0, -1):
            if all(run[n - 1] >= n - first_needed_block(n * self.block_size, w, self.block_size) for w, run in runs):
                return n
        return 0

    # ---- allocation -------------------------------------------------------------------------------------------
    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVBlock | None] | None = None) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens after the request's computed ones (plus, on first
        scheduling, the prefix-cache hits `new_computed_blocks`). Returns the newly allocated blocks, or
        None when the free blocks are too few. Window groups first release the blocks no query will read
        again (even when the allocation then fails: they are never needed again); nothing else changes on
        failure."""
        if not new_computed_blocks and not self.has_windows and self.num_groups == 1:
            # the common decode step: its blocks have room and none fills up
            held = self.req_to_blocks.get(request.request_id)
            total = request.num_computed_tokens + num_new_tokens
            cached = self._num_cached_blocks.get(request.request_id, 0)
            if held and total <= len(held) * self.block_size and (
                    not self.enable_caching or total // self.block_size <= cached):
                return []
        new_computed_blocks = new_computed_blocks or []
        rid, num_groups = request.request_id, self.num_groups
        blocks = self.req_to_blocks.setdefault(rid, [])
        if blocks and self.has_windows:
            self._release_out_of_window(rid, request.num_computed_tokens)
        num_computed = request.num_computed_tokens + len(new_computed_blocks) // num_groups * self.block_size
        total_tokens = num_computed + num_new_tokens
        num_logical = (len(blocks) + len(new_computed_blocks)) // num_groups
        num_needed = (cdiv(total_tokens, self.block_size) - num_logical) * num_groups
        # Hit blocks nobody references sit in the free queue: taking them shrinks what is free.
        num_hits_free = sum(1 for b in new_computed_blocks if b is not None and b.ref_cnt == 0)
        if num_needed > self.pool.num_free_blocks - num_hits_free:
            if not blocks:
                del self.req_to_blocks[rid]
            return None
        ids = self.req_to_block_ids.setdefault(rid, [])
        if new_computed_blocks:
            self.pool.touch(b for b in new_computed_blocks if b is not None)
            blocks.extend(new_computed_blocks)
            ids.extend(NULL_BLOCK_ID if b is None else b.block_id for b in new_computed_blocks)
            self._num_cached_blocks[rid] = len(blocks) // num_groups
            if self.has_windows:
                self._num_released[rid] = [first_needed_block(num_computed, w, self.block_size) for w in self.windows]
        new_blocks = self.pool.get_new_blocks(max(num_needed, 0))
        blocks.extend(new_blocks)
        ids.extend(b.block_id for b in new_blocks)
        if self.enable_caching:
            self._cache_full_blocks(request, blocks, total_tokens)
        return new_blocks

    def _release_out_of_window(self, rid: str, num_computed: int) -> None:
        """Free every block of a window group that lies wholly before the oldest key a query at position
        `num_computed` (this step's first) reads. Freed last-first, like `free`."""
        blocks, ids = self.req_to_blocks[rid], self.req_to_block_ids[rid]
        released = self._num_released.setdefault(rid, [0] * self.num_groups)
        freed: list[KVBlock] = []
        for g, window in enumerate(self.windows):
            if window is None:
                continue
            upto = min(first_needed_block(num_computed, window, self.block_size), len(blocks) // self.num_groups)
            for i in range(released[g], upto):
                j = i * self.num_groups + g
                if blocks[j] is not None:
                    freed.append(blocks[j])
                    blocks[j], ids[j] = None, NULL_BLOCK_ID
            released[g] = max(released[g], upto)
        self.pool.free_blocks(reversed(freed))

    def _cache_full_blocks(self, request: Request, blocks: list[KVBlock | None], num_tokens: int) -> None:
        """Register blocks that will be full once this step's tokens are written. Their token ids are all
        known now, and within one forward pass every layer stores K/V before it reads them, so another
        request scheduled in the same step may already reuse them."""
        # A token sampled by a step still in flight has no value here yet: the block it completes is
        # registered by the request's next allocation, once the token is known.
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        start = self._num_cached_blocks.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._update_hashes(request)
        for i in range(start, num_full):
            for g in range(self.num_groups):
                block = blocks[i * self.num_groups + g]
                if block is not None:
                    self.pool.cache_block(block, self.cache_key(hashes[i], g))
        self._num_cached_blocks[request.request_id] = num_full

    # ---- freeing ------------------------------------------------------------------------------------------------
    def free(self, request: Request) -> None:
        """Release every block of the request, last block first (so its tail is evicted first)."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.req_to_block_ids.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        self._num_released.pop(request.request_id, None)
        self.pool.free_blocks(b for b in reversed(blocks) if b is not None)

    def trim(self, request) -> int:
        """Free the request's blocks wholly past its computed tokens (speculative decoding: the blocks that
        rejected drafts took), last first; returns the table's new length. None of them is in the prefix
        cache: it only registers blocks full of known tokens, and rejected drafts never were."""
        rid, g = request.request_id, self.num_groups
        blocks = self.req_to_blocks.get(rid)
        keep = cdiv(request.num_computed_tokens, self.block_size) * g
        if not blocks or len(blocks) <= keep:
            return len(blocks or ())
        surplus = blocks[keep:]
        del blocks[keep:]
        del self.req_to_block_ids[rid][keep:]
        if rid in self._num_cached_blocks:
            self._num_cached_blocks[rid] = min(self._num_cached_blocks[rid], keep // g)
        self.pool.free_blocks(b for b in reversed(surplus) if b is not None)
        return keep

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a live list: it grows as the request does)."""
        return self.req_to_block_ids.get(request_id, [])

    def num_blocks_for(self, num_tokens: int) -> int:
        """The most blocks a request of `num_tokens` tokens holds at once: every block in a full group; in a
        window group the window plus one step's chunk (its keys are all stored before any is released)."""
        full = cdiv(num_tokens, self.block_size)
        chunk = num_tokens if self.max_chunk_tokens is None else min(num_tokens, self.max_chunk_tokens)
        return sum(full if w is None else min(full, cdiv(w - 1 + chunk, self.block_size) + 1) for w in self.windows)
