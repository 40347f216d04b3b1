"""One host-to-device copy per step in, one device-to-host copy per step out.

`StagingBuffer.upload` packs every per-step array (token ids, positions, slot mapping, `cu_seqlens_q`,
`seq_lens`, block tables, logits indices, the sampling rows' parameters...) into one persistent host buffer,
copies the used bytes to one persistent device buffer in a single `copy_`, and returns device views of each
array (same dtype and shape) into that buffer. On CUDA the host buffers are pinned, so the copy is a true
asynchronous DMA that returns at once; there are two of them, used in turn, and a buffer is refilled only
after its previous copy has completed (an event per buffer), so the host can prepare step N+1 while step N's
copy is still queued. On the CPU the same code runs with plain buffers.

`ReadbackBuffer.download` is the way back: one device tensor (the step's sampled ids, with logprobs packed
in when asked for) copied into one of two pinned host buffers; `ready()` waits for that copy only.

Both buffers grow (rarely: e.g. a step whose block tables are wider than any before) and never shrink.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_ALIGN = 16  # every array starts on a 16-byte boundary, so any dtype view of the byte buffer is aligned


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


_TORCH_DTYPES = {np.dtype(n): getattr(torch, n) for n in ("int64", "int32", "float32", "bool", "uint8")}


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return _TORCH_DTYPES.get(dtype) or torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class _HostBuffers:
    """Two host byte buffers (pinned on CUDA), used in turn; each remembers the copy that last read or wrote it."""

    def __init__(self, device: torch.device, nbytes: int):
        self.device = device
        self.pin = device.type == "cuda"
        self.tensors = [self._alloc(nbytes), self._alloc(nbytes)]
        self.arrays = [t.numpy() for t in self.tensors]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.uses = [0, 0]  # how often each buffer was handed out: a reader checks it was not reused since
        self.turn = 0

    def _alloc(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    @property
    def nbytes(self) -> int:
        return self.tensors[0].numel()

    def next(self) -> int:
        """The buffer to fill now, once the copy that last used it has completed."""
        k, self.turn = self.turn, self.turn ^ 1
        event = self.events[k]
        if event is not None:
            event.synchronize()
            self.events[k] = None
        self.uses[k] += 1
        return k

    def record(self, k: int) -> None:
        if self.pin:
            event = torch.cuda.Event()
            event.record()
            self.events[k] = event

    def grow(self, nbytes: int) -> None:
        for event in self.events:  # the old buffers may still be read or written by a queued copy
            if event is not None:
                event.synchronize()
        self.__init__(self.device, max(nbytes, 2 * self.nbytes))


class StagingBuffer:
    def __init__(self, device: torch.device, nbytes: int = 1 << 16):
        self.device = device
        self.host = _HostBuffers(device, nbytes)
        self.dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.num_uploads = 0  # host-to-device copies made (one per upload): what tests count

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Copy `arrays` to the device with one copy; returns a device view of each, in order. The views stay
        valid until the next upload (which reuses the device buffer, in stream order)."""
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += _aligned(a.nbytes)
        if total > self.host.nbytes:
            self.host.grow(total)
        if total > self.dev.numel():
            self.dev = torch.empty(self.host.nbytes, dtype=torch.uint8, device=self.device)
        k = self.host.next()
        buf = self.host.arrays[k]
        for a, off in zip(arrays, offsets):
            if a.nbytes:
                buf[off:off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        self.dev[:total].copy_(self.host.tensors[k][:total], non_blocking=True)
        self.host.record(k)
        self.num_uploads += 1
        return [self.dev[off:off + a.nbytes].view(_torch_dtype(a.dtype)).view(a.shape)
                for a, off in zip(arrays, offsets)]


class ReadbackBuffer:
    def __init__(self, device: torch.device, nbytes: int = 1 << 14):
        self.host = _HostBuffers(device, nbytes)
        self.num_downloads = 0  # device-to-host copies made

    def download(self, src: torch.Tensor) -> "Readback":
        """Start copying `src` (1-D, contiguous) to the host; the returned handle gives it as numpy."""
        nbytes = src.numel() * src.element_size()
        if nbytes > self.host.nbytes:
            self.host.grow(nbytes)
        k = self.host.next()
        self.host.tensors[k][:nbytes].view(src.dtype).copy_(src, non_blocking=True)
        self.host.record(k)
        self.num_downloads += 1
        return Readback(self.host, k, src.dtype, src.numel())


class Readback:
    """A device-to-host copy in flight. Read it before the same buffer's next download (two downloads later)."""

    def __init__(self, host: _HostBuffers, k: int, dtype: torch.dtype, numel: int):
        self._host, self._k, self._use = host, k, host.uses[k]
        self._tensor = host.tensors[k]  # this buffer, even if the buffers grow meanwhile
        self._dtype, self._numel = dtype, numel
        self._event = host.events[k]

    def ready(self) -> np.ndarray:
        """Wait for the copy; its values as numpy (a copy, so the buffer can be reused at once)."""
        if self._event is not None:
            self._event.synchronize()
        if self._tensor is self._host.tensors[self._k] and self._host.uses[self._k] != self._use:
            raise RuntimeError("a step's sampled tokens were read after their buffer was reused")
        return self._tensor[:self._numel * self._dtype.itemsize].view(self._dtype).numpy().copy()
