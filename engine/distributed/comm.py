"""The process groups tensor-parallel ranks talk over, built directly on torch.distributed's backends.

Rank 0 hosts a `TCPStore` on 127.0.0.1 (port 0: the OS picks a free one, no race) that the ranks use once,
to find each other; every group binds 127.0.0.1 too. The groups are constructed as objects
(`ProcessGroupGloo`, `ProcessGroupNCCL`) rather than through `init_process_group`, so nothing lands in
torch.distributed's process-wide default group: two engines can live in one process, one after the other.

- `model` group: the all-reduces inside the forward pass and the logits gather. gloo on the CPU, NCCL on CUDA.
  A collective waits at most the distributed timeout for the other ranks.
- `cpu` group (gloo): agreements at startup, while ranks may be minutes apart (loading shards of a large
  model from a shared disk): "every rank has loaded its weights" before the first forward pass, and the KV
  block count on GPUs. It waits up to `STARTUP_TIMEOUT_S`.

A rank that died closes its sockets and the others' gloo collectives fail at once ("Connection reset by
peer" / "closed by peer").
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


# Starting a rank (importing torch, loading a shard) on a busy machine can take minutes; a rank that dies
# meanwhile is noticed at once, so this only bounds a rank that hangs while starting.
STARTUP_TIMEOUT_S = 600.0


def create_store(world: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free loopback port (`store.port`)."""
    return dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)


def connect_store(port: int, world: int, timeout_s: float) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))


def _gloo(store, rank: int, world: int, timeout: datetime.timedelta):
    opts = dist.ProcessGroupGloo._Options()
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    opts._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world, opts)


def _nccl(store, rank: int, world: int, timeout: datetime.timedelta):  # pragma: no cover - needs several GPUs
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world, opts)


class TPComm:
    """One rank's view of its tensor-parallel group."""

    def __init__(self, store, rank: int, world: int, device: torch.device, timeout_s: float):
        self.rank, self.world, self.device = rank, world, device
        timeout = datetime.timedelta(seconds=timeout_s)
        startup = datetime.timedelta(seconds=max(timeout_s, STARTUP_TIMEOUT_S))
        self.cpu = _gloo(dist.PrefixStore("kvserve/cpu", store), rank, world, startup)
        make = _gloo if device.type == "cpu" else _nccl
        self.model = make(dist.PrefixStore("kvserve/model", store), rank, world, timeout)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place (it must be contiguous); returns it."""
        self.model.allreduce([x]).wait()
        return x

    def gather(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's `x` (same shape everywhere) on rank 0, in rank order; None on the other ranks."""
        outputs = [[torch.empty_like(x) for _ in range(self.world)]] if self.rank == 0 else []
        opts = dist.GatherOptions()
        opts.rootRank = 0
        self.model.gather(outputs, [x], opts).wait()
        return outputs[0] if self.rank == 0 else None

    def wait_for_all(self) -> None:
        """Block until every rank gets here (over the CPU group, with the startup timeout)."""
        t = torch.zeros(1)
        self.cpu.allreduce([t]).wait()

    def min_int(self, value: int) -> int:
        """The smallest `value` over the ranks (over the CPU group)."""
        t = torch.tensor([value], dtype=torch.int64)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MIN
        self.cpu.allreduce([t], opts).wait()
        return int(t.item())
