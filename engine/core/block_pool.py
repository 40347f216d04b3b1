"""The pool of KV-cache blocks: ref counts, the free queue (LRU order) and the prefix-cache hash map.

The pool never sees requests. It hands out blocks, takes them back, and remembers which full blocks hold
which content (by hash) so that a later request with the same prefix can reuse them.

Free-queue order is the eviction order: blocks are taken from the head and returned to the tail. A freed
block keeps its hash and its KV content until it is handed out again ("lazy eviction"), so a request that
arrives in between can still hit it. Callers free a request's blocks last-first, so the end of a sequence
(the part least likely to be shared) is evicted before its beginning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class KVBlock:
    """One block of `block_size` token slots in every layer's K and V cache."""

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev", "next")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None
        self.prev: KVBlock | None = None
        self.next: KVBlock | None = None

    def __repr__(self) -> str:
        return f"KVBlock(id={self.block_id}, ref={self.ref_cnt}, cached={self.block_hash is not None})"


class FreeBlockQueue:
    """A doubly linked list of free blocks: O(1) pop from the head, append to the tail and removal from
    the middle (a prefix-cache hit takes a free block back out of the queue)."""

    def __init__(self, blocks: Iterable[KVBlock]):
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next, self._tail.prev = self._tail, self._head
        self._len = 0
        for b in blocks:
            self.append(b)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._head.next
        while node is not self._tail:
            yield node
            node = node.next

    def popleft(self) -> KVBlock:
        block = self._head.next
        if block is self._tail:
            raise IndexError("no free blocks")
        self.remove(block)
        return block

    def remove(self, block: KVBlock) -> None:
        assert block.prev is not None and block.next is not None, f"{block} is not in the free queue"
        block.prev.next, block.next.prev = block.next, block.prev
        block.prev = block.next = None
        self._len -= 1

    def append(self, block: KVBlock) -> None:
        last = self._tail.prev
        last.next, block.prev, block.next, self._tail.prev = block, last, self._tail, block
        self._len += 1


class BlockPool:
    """`num_blocks` blocks with ids 0..num_blocks-1, all free at start, in id order."""

    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks: must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[bytes, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Take `n` blocks from the head of the free queue (evicting their cached content), ref count 1."""
        if n > len(self.free_queue):
            raise ValueError(f"cannot allocate {n} blocks: only {len(self.free_queue)} free")
        out = []
        for _ in range(n):
            block = self.free_queue.popleft()
            self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on blocks found in the prefix cache (pulling free ones out of the free queue)."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference on each block, in the given order; blocks reaching 0 join the queue's tail."""
        for block in blocks:
            assert block.ref_cnt > 0, f"double free of {block}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def get_cached_block(self, block_hash: bytes) -> KVBlock | None:
        return self.cached.get(block_hash)

    def cache_block(self, block: KVBlock, block_hash: bytes) -> None:
        """Record that `block` holds the content named by `block_hash`. If another block already holds that
        content, this one stays anonymous (it is an equal copy and is freed like any other block)."""
        if not self.enable_caching or block.block_hash is not None or block_hash in self.cached:
            return
        block.block_hash = block_hash
        self.cached[block_hash] = block

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = None

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only allowed when no block is in use (returns False otherwise)."""
        if self.num_used_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached.clear()
        return True

    def check_invariants(self) -> None:
        """Internal consistency, for tests and idle-time checks: raises AssertionError on corruption."""
        in_queue = list(self.free_queue)
        assert len(in_queue) == len(self.free_queue) == len({b.block_id for b in in_queue})
        assert all(b.ref_cnt == 0 for b in in_queue), "a free-queue block has references"
        queued = {b.block_id for b in in_queue}
        for b in self.blocks:
            assert b.ref_cnt >= 0
            assert (b.ref_cnt == 0) == (b.block_id in queued), f"{b} ref count disagrees with the free queue"
        for h, b in self.cached.items():
            assert b.block_hash == h, f"hash map points at {b} whose hash differs"
        for b in self.blocks:
            assert b.block_hash is None or self.cached.get(b.block_hash) is b, f"{b} has a hash the map does not know"
        node = self.free_queue._tail
        backwards = []
        while node.prev is not None:
            node = node.prev
            if node is not self.free_queue._head:
                backwards.append(node.block_id)
        assert backwards[::-1] == [b.block_id for b in in_queue], "free queue's backward links disagree"
