"""The pool of KV-cache blocks: ref counts, the free queue (LRU order) and the prefix-cache hash map.

The pool never sees requests. It hands out blocks, takes them back, and remembers which full blocks hold
which content (by hash) so that a later request with the same prefix can reuse them.

Free-queue order is the eviction order: blocks are taken from the head and returned to the tail. A freed
block keeps its hash and its KV content until it is handed out again ("lazy eviction"), so a request that
arrives in between can still hit it. Callers free a request's blocks last-first, so the end of a sequence
(the part least likely to be shared) is evicted before its beginning.

Construction is O(1) at any size (a GPU pool can hold millions of blocks): a block's Python object is made
the first time it is needed, and blocks never handed out yet sit at the head of the free queue as a plain
id range rather than as linked nodes. The order is exactly that of a queue built from every block in id
order: a block only joins the tail after it was handed out, and the untouched ids are always at the head.

    free queue:  [fresh ids next_fresh .. num_blocks-1] ++ [linked list of blocks freed since]
                  (head: handed out first)                 (tail: freed last)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


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


class LazyBlocks(Sequence):
    """Blocks 0..n-1 as a read-only sequence whose KVBlock objects are made on first access, in id order
    (asking for block i makes every block below i too), so that `len()` is n from the start at no cost."""

    def __init__(self, num_blocks: int):
        self._n = num_blocks
        self._made: list[KVBlock] = []

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"block id {i} out of range for {self._n} blocks")
        made = self._made
        if i >= len(made):
            made.extend(map(KVBlock, range(len(made), i + 1)))
        return made[i]

    def __iter__(self) -> Iterator[KVBlock]:
        for i in range(self._n):
            yield self[i]

    def made(self) -> list[KVBlock]:
        """The blocks made so far (ids 0..len-1); every block not in it is untouched."""
        return self._made

    def peek(self, i: int) -> KVBlock | None:
        """Block i if it was made already, else None (makes nothing)."""
        return self._made[i] if 0 <= i < len(self._made) else None


class FreeBlockQueue:
    """The free blocks in eviction order: a range of never-used ids at the head (from `fresh`, if given),
    then a doubly linked list with O(1) pop from the head, append to the tail and removal from the middle
    (a prefix-cache hit takes a free block back out of the queue)."""

    def __init__(self, blocks: Iterable[KVBlock] = (), fresh: LazyBlocks | None = None):
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next, self._tail.prev = self._tail, self._head
        self._fresh = fresh
        self._next_fresh = 0
        self._fresh_end = len(fresh) if fresh is not None else 0
        self._len = self._fresh_end
        for b in blocks:
            self.append(b)

    def __len__(self) -> int:
        return self._len

    @property
    def num_fresh(self) -> int:
        """How many blocks at the head have never been handed out (they are not linked nodes)."""
        return self._fresh_end - self._next_fresh

    def __iter__(self) -> Iterator[KVBlock]:
        for i in range(self._next_fresh, self._fresh_end):
            yield self._fresh[i]
        yield from self.linked()

    def linked(self) -> Iterator[KVBlock]:
        """The linked part of the queue, head first (the queue without its fresh range)."""
        node = self._head.next
        while node is not self._tail:
            yield node
            node = node.next

    def popleft(self) -> KVBlock:
        if self._len == 0:
            raise IndexError("no free blocks")
        return self.popleft_n(1)[0]

    def popleft_n(self, n: int) -> list[KVBlock]:
        """Take the first n blocks (the caller checked that n <= len(self))."""
        out: list[KVBlock] = []
        take = min(n, self._fresh_end - self._next_fresh)
        if take > 0:
            start = self._next_fresh
            self._fresh[start + take - 1]  # makes the objects up to there
            out = self._fresh.made()[start:start + take]
            self._next_fresh = start + take
        head, tail = self._head, self._tail
        for _ in range(n - take):
            block = head.next
            nxt = block.next
            head.next, nxt.prev = nxt, head
            block.prev = block.next = None
            out.append(block)
        self._len -= n
        return out

    def remove(self, block: KVBlock) -> None:
        if block.prev is None and self._is_fresh(block):
            self._link_fresh_range()  # rare: only a block that was never handed out sits there
        assert block.prev is not None and block.next is not None, f"{block} is not in the free queue"
        block.prev.next, block.next.prev = block.next, block.prev
        block.prev = block.next = None
        self._len -= 1

    def append(self, block: KVBlock) -> None:
        last = self._tail.prev
        last.next, block.prev, block.next, self._tail.prev = block, last, self._tail, block
        self._len += 1

    def _is_fresh(self, block: KVBlock) -> bool:
        i = block.block_id
        return self._fresh is not None and self._next_fresh <= i < self._fresh_end and self._fresh.peek(i) is block

    def _link_fresh_range(self) -> None:
        """Turn the fresh range into linked nodes at the head, in the same order (O(number of fresh ids))."""
        prev, first = self._head, self._head.next
        for i in range(self._next_fresh, self._fresh_end):
            block = self._fresh[i]
            prev.next, block.prev = block, prev
            prev = block
        prev.next, first.prev = first, prev
        self._next_fresh = self._fresh_end


class BlockPool:
    """`num_blocks` blocks with ids 0..num_blocks-1, all free at start, in id order."""

    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks: must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = LazyBlocks(num_blocks)
        self.free_queue = FreeBlockQueue(fresh=self.blocks)
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
        out = self.free_queue.popleft_n(n)
        for block in out:
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
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
        for block in self.blocks.made():  # untouched blocks have no hash
            block.block_hash = None
        self.cached.clear()
        return True

    def check_invariants(self) -> None:
        """Internal consistency, for tests and idle-time checks: raises AssertionError on corruption.
        Costs O(blocks made so far), not O(num_blocks): untouched blocks have nothing to check."""
        queue = self.free_queue
        linked = list(queue.linked())
        fresh_ids = range(queue._next_fresh, queue._fresh_end)
        assert queue._fresh_end == self.num_blocks and len(fresh_ids) == queue.num_fresh
        assert len(linked) + len(fresh_ids) == len(queue), "free-queue length disagrees with its contents"
        linked_ids = {b.block_id for b in linked}
        assert len(linked_ids) == len(linked), "a block is twice in the free queue"
        assert not any(i in fresh_ids for i in linked_ids), "a never-used block is also linked in the queue"
        for b in self.blocks.made():
            assert b.ref_cnt >= 0
            free = b.block_id in linked_ids or b.block_id in fresh_ids
            assert (b.ref_cnt == 0) == free, f"{b} ref count disagrees with the free queue"
            if b.block_id in fresh_ids:
                assert b.prev is None and b.next is None and b.block_hash is None, f"never-used {b} is not clean"
        assert all(b.ref_cnt == 0 for b in linked), "a free-queue block has references"
        assert all(self.blocks.peek(b.block_id) is b for b in linked), "a foreign block is in the free queue"
        for h, b in self.cached.items():
            assert b.block_hash == h, f"hash map points at {b} whose hash differs"
        for b in self.blocks.made():
            assert b.block_hash is None or self.cached.get(b.block_hash) is b, f"{b} has a hash the map does not know"
        node = queue._tail
        backwards = []
        while node.prev is not None:
            node = node.prev
            if node is not queue._head:
                backwards.append(node.block_id)
        assert backwards[::-1] == [b.block_id for b in linked], "free queue's backward links disagree"
