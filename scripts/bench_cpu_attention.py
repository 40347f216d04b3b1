"""Decode attention on the CPU, side by side in one process: what each way costs per layer.

    .venv/bin/python scripts/bench_cpu_attention.py [--streams 1,8,32] [--context 200,1000] [--threads 1,2] [--flex]

For each (streams, context) batch of decoding sequences (the default model's heads: 9 query / 3 KV heads,
D = 64, block size 16, pages in random order in a cache of --cache-blocks blocks so the batch's pages are not
all in the CPU's caches), times one layer's decode attention done

- `torch`: the engine's torch backend (pages gathered per layer into a padded contiguous copy, then SDPA),
  planned and called exactly as the engine does;
- `cpu`: the engine's cpu backend, i.e. the same backend with the C decode kernel reading the pages in place;
- `flex` (with --flex): PyTorch's compiled flex_attention over the same pages, its block mask naming each
  sequence's pages (the library route; its first call compiles for tens of seconds);

with a float32 cache and (torch and cpu) an int8 one. Prints the median of --repeats timings (each the mean
of --iters calls) in ms, the ratio to torch, and the bytes of K/V read per ms (GB/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.attention import build_attention_metadata, get_attention_backend  # noqa: E402
from engine.quantization.kv_cache import quantize_kv  # noqa: E402
from engine.quantization.config import kv_cache_dtype  # noqa: E402

H, KVH, D, BS = 9, 3, 64, 16


def timed(fn, iters: int, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        runs.append((time.perf_counter() - t) / iters * 1e3)
    return statistics.median(runs)


def flex_call(q, kc, vc, tables: np.ndarray, lens: np.ndarray, scale: float):
    """A compiled flex_attention over the pages: one query row per sequence, the block mask lists its pages."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    s, nb = len(lens), kc.shape[0]
    nblk = -(-lens // BS)
    last = torch.from_numpy(tables[np.arange(s), nblk - 1].astype(np.int64))
    last_len = torch.from_numpy((lens - (nblk - 1) * BS).astype(np.int64))

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx // BS != last[b]) | (kv_idx % BS < last_len[b])

    partial = torch.zeros(s, 1, 1, nb, dtype=torch.int32)
    partial[:, 0, 0, 0] = last.to(torch.int32)
    full = torch.zeros(s, 1, 1, nb, dtype=torch.int32)
    full[:, 0, 0, :tables.shape[1]] = torch.from_numpy(tables.astype(np.int32))
    mask = BlockMask.from_kv_blocks(torch.ones(s, 1, 1, dtype=torch.int32), partial,
                                    torch.from_numpy((nblk - 1).astype(np.int32)).view(s, 1, 1), full,
                                    BLOCK_SIZE=(128, BS), mask_mod=mask_mod, seq_lengths=(1, nb * BS))
    k = kc.view(nb * BS, KVH, D).permute(1, 0, 2).unsqueeze(0)
    v = vc.view(nb * BS, KVH, D).permute(1, 0, 2).unsqueeze(0)
    fn = torch.compile(flex_attention, dynamic=False)
    qq = q.view(s, H, 1, D)
    return lambda: fn(qq, k, v, block_mask=mask, scale=scale, enable_gqa=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--context", default="200,1000")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--cache-blocks", type=int, default=20000, help="blocks in the cache (about 12 KiB each)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--flex", action="store_true", help="also time compiled flex_attention (compiles first)")
    args = p.parse_args()
    torch_backend, cpu_backend = get_attention_backend("torch"), get_attention_backend("cpu")
    if cpu_backend.decode_kernel is None:
        raise SystemExit("the cpu backend has no decode kernel on this machine (see the log): nothing to compare")
    gen = torch.Generator().manual_seed(0)
    shape = (args.cache_blocks, BS, KVH, D)
    kc, vc = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    spec = kv_cache_dtype("int8")
    (k8, ks), (v8, vs) = quantize_kv(kc, spec), quantize_kv(vc, spec)
    rng = np.random.default_rng(0)
    scale = D ** -0.5
    print(f"{'threads':>7} {'streams':>7} {'context':>7} {'cache':>5} {'way':>6} {'ms':>8} {'x torch':>8} {'GB/s':>6}")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for streams in (int(s) for s in args.streams.split(",")):
            for context in (int(c) for c in args.context.split(",")):
                lens = rng.integers(max(1, context * 9 // 10), context + 1, streams)
                nblk = -(-lens // BS)
                tables = np.zeros((streams, int(nblk.max())), dtype=np.int32)
                pages = rng.permutation(args.cache_blocks)[:int(nblk.sum())]
                for s, start in enumerate(np.concatenate([[0], np.cumsum(nblk)[:-1]])):
                    tables[s, :nblk[s]] = pages[start:start + nblk[s]]
                q_lens = np.ones(streams, dtype=np.int32)
                slots = (tables[np.arange(streams), nblk - 1] * BS + (lens - 1) % BS).astype(np.int64)
                q = torch.randn(streams, H, D, generator=gen)
                new_k = new_v = torch.zeros(streams, KVH, D)
                for cache, (kk, vv, scales), elem in (("fp32", (kc, vc, None), 4), ("int8", (k8, v8, (ks, vs)), 1)):
                    row = {}
                    for name, backend in (("torch", torch_backend), ("cpu", cpu_backend)):
                        plan = backend.plan(q_lens, lens, tables, BS, torch.device("cpu"), torch.float32)
                        meta = build_attention_metadata(q_lens, lens, tables, slots, torch.device("cpu"), plan)
                        row[name] = timed(lambda: backend.attention(q, new_k, new_v, kk, vv, meta, scale, kv_scales=scales),
                                          args.iters, args.repeats)
                    if args.flex and cache == "fp32":
                        row["flex"] = timed(flex_call(q, kc, vc, tables, lens, scale), args.iters, args.repeats)
                    gbytes = 2 * int(lens.sum()) * KVH * D * elem / 1e9
                    for name, ms in row.items():
                        print(f"{threads:>7} {streams:>7} {context:>7} {cache:>5} {name:>6} {ms:>8.3f} "
                              f"{row['torch'] / ms:>7.2f}x {gbytes / ms * 1e3:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
