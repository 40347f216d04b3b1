"""Which blocks each request holds: allocation per step, prefix-cache lookup, and freeing.

The manager maps request id -> block list and decides whether a step's tokens fit. It hashes a request's
full blocks with a chained hash (a block's hash covers its tokens and, through its parent's hash, every token
before it), so equal hashes mean equal prefixes, and asks the block pool for cached blocks by hash.
"""

from __future__ import annotations

import hashlib
from array import array

from .block_pool import BlockPool, KVBlock
from .request import Request


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
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True):
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}
        self.req_to_block_ids: dict[str, list[int]] = {}  # the block table, kept in step with req_to_blocks
        self._num_cached_blocks: dict[str, int] = {}

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

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest run of the request's leading full blocks that the prefix cache holds, and the
        number of tokens they cover. At least one token is always left to compute (the step that computes
        the last token produces the logits to sample from)."""
        if not self.enable_caching:
            return [], 0
        hashes = self._update_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVBlock] | None = None) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens after the request's computed ones (plus, on first
        scheduling, the prefix-cache hits `new_computed_blocks`). Returns the newly allocated blocks, or
        None, changing nothing, when the free blocks are too few."""
        if not new_computed_blocks:  # the common decode step: its blocks have room and none fills up
            held = self.req_to_blocks.get(request.request_id)
            total = request.num_computed_tokens + num_new_tokens
            cached = self._num_cached_blocks.get(request.request_id, 0)
            if held and total <= len(held) * self.block_size and (
                    not self.enable_caching or total // self.block_size <= cached):
                return []
        new_computed_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        total_tokens = num_computed + num_new_tokens
        num_needed = cdiv(total_tokens, self.block_size) - len(blocks) - len(new_computed_blocks)
        # Hit blocks nobody references sit in the free queue: taking them shrinks what is free.
        num_hits_free = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if num_needed > self.pool.num_free_blocks - num_hits_free:
            if not blocks:
                del self.req_to_blocks[request.request_id]
            return None
        ids = self.req_to_block_ids.setdefault(request.request_id, [])
        if new_computed_blocks:
            self.pool.touch(new_computed_blocks)
            blocks.extend(new_computed_blocks)
            ids.extend(b.block_id for b in new_computed_blocks)
            self._num_cached_blocks[request.request_id] = len(blocks)
        new_blocks = self.pool.get_new_blocks(max(num_needed, 0))
        blocks.extend(new_blocks)
        ids.extend(b.block_id for b in new_blocks)
        if self.enable_caching:
            self._cache_full_blocks(request, blocks, total_tokens)
        return new_blocks

    def _cache_full_blocks(self, request: Request, blocks: list[KVBlock], num_tokens: int) -> None:
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
            self.pool.cache_block(blocks[i], hashes[i])
        self._num_cached_blocks[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Release every block of the request, last block first (so its tail is evicted first)."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.req_to_block_ids.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        self.pool.free_blocks(reversed(blocks))

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a live list: it grows as the request does)."""
        return self.req_to_block_ids.get(request_id, [])

    def num_blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)
