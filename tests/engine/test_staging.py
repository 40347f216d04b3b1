"""The step's one upload and one readback: every array arrives intact as a view of one device buffer, the
buffers grow when a step needs more, and a readback refuses to hand out data from a reused buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.worker.staging import ReadbackBuffer, StagingBuffer

CPU = torch.device("cpu")


def step_arrays(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.integers(0, 2**40, n, dtype=np.int64), np.arange(n + 1, dtype=np.int32),
            rng.integers(0, 999, (n, 3), dtype=np.int32).astype(np.int32), rng.random(n).astype(np.float32),
            np.zeros(0, dtype=np.int64), rng.random(n) < 0.5]


def test_every_array_comes_back_with_its_dtype_shape_and_values_from_one_copy():
    staging = StagingBuffer(CPU, nbytes=64)
    rng = np.random.default_rng(0)
    for n in (1, 7, 300, 5):  # 300 rows outgrow the 64-byte buffer: it grows, the views stay right
        arrays = step_arrays(rng, n)
        views = staging.upload(arrays)
        for a, v in zip(arrays, views):
            assert v.dtype == torch.from_numpy(a).dtype and tuple(v.shape) == a.shape
            assert np.array_equal(v.numpy(), a)
        # every view is a slice of the one device buffer
        base = staging.dev.data_ptr()
        assert all(base <= v.data_ptr() < base + staging.dev.numel() for v in views if v.numel())
    assert staging.num_uploads == 4


def test_views_are_aligned_for_their_dtype():
    staging = StagingBuffer(CPU)
    views = staging.upload([np.ones(3, np.int32), np.ones(1, np.bool_), np.ones(5, np.int64), np.ones(2, np.float32)])
    assert all(v.data_ptr() % 16 == 0 for v in views)


def test_the_next_upload_reuses_the_device_buffer():
    """Views of a step are valid until the next upload: the device buffer is persistent, not reallocated."""
    staging = StagingBuffer(CPU)
    first = staging.upload([np.array([1, 2, 3], dtype=np.int64)])[0]
    staging.upload([np.array([7, 8, 9], dtype=np.int64)])
    assert first.tolist() == [7, 8, 9]


def test_a_readback_returns_its_own_values_even_after_the_buffers_grow():
    readback = ReadbackBuffer(CPU, nbytes=16)
    first = readback.download(torch.arange(3, dtype=torch.int32))
    second = readback.download(torch.arange(100, 200, dtype=torch.int32))  # grows past 16 bytes
    assert first.ready().tolist() == [0, 1, 2]
    assert second.ready().tolist() == list(range(100, 200))
    assert readback.num_downloads == 2


def test_a_readback_read_after_its_buffer_was_reused_is_refused():
    readback = ReadbackBuffer(CPU)
    first = readback.download(torch.tensor([1, 2], dtype=torch.int32))
    readback.download(torch.tensor([3], dtype=torch.int32))
    readback.download(torch.tensor([4], dtype=torch.int32))  # the first buffer's turn again
    with pytest.raises(RuntimeError, match="reused"):
        first.ready()


def test_each_engine_step_uploads_once_and_reads_back_once(tiny_model_dir, prompts_fn):
    """Chunked prefill (some steps sample nothing), decodes, penalties, logprobs: one upload per step that runs
    the model, one readback per step that samples, nothing else crosses (the GPU test counts the real copies)."""
    from engine import LLM, SamplingParams

    llm = LLM(tiny_model_dir("llama"), device="cpu", max_num_batched_tokens=16)
    engine = llm.engine
    schedule, steps = engine.scheduler.schedule, []

    def recording_schedule():
        steps.append(schedule())
        return steps[-1]

    engine.scheduler.schedule = recording_schedule
    params = [SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=1, presence_penalty=0.5, logprobs=2, max_tokens=5, ignore_eos=True)]
    llm.generate(prompts_fn(4, [40, 3], seed=9), params * 2)  # the first step is a 16-token chunk: no sample
    runner = engine.runner
    assert runner.staging.num_uploads == sum(bool(s.seqs) for s in steps)
    assert runner.readback.num_downloads == sum(any(q.sample for q in s.seqs) for s in steps)
    assert any(s.seqs and not any(q.sample for q in s.seqs) for s in steps), "no step without sampling"
