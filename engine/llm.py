"""The offline API: `LLM(...).generate(prompts, SamplingParams(...))` -> one `RequestOutput` per prompt.

    from engine import LLM, SamplingParams
    llm = LLM()                      # the default model, SmolLM2-135M-Instruct, on the CPU or a GPU
    llm = LLM(tensor_parallel_size=2)  # the model sharded over 2 processes (2 GPUs on CUDA)
    outs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
    print(outs[0].text)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from .config import EngineArgs
from .engine import LLMEngine
from .outputs import CompletionOutput, RequestOutput, SequenceDelta
from .sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto", block_size: int = 16,
                 num_kv_blocks: int | None = None, max_num_seqs: int = 256, max_num_batched_tokens: int = 2048,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True, load_format: str = "auto",
                 seed: int = 0, **kwargs):
        args = EngineArgs(model=model, device=device, dtype=dtype, block_size=block_size, num_kv_blocks=num_kv_blocks,
                          max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                          load_format=load_format, seed=seed, **kwargs)
        self.engine = LLMEngine.from_args(args)
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes, if any (also done when the LLM is garbage-collected or
        the interpreter exits)."""
        self.engine.shutdown()

    def generate(self, prompts: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for every prompt (text, or a list of token ids) and return results in prompt order.
        Invalid input raises ValueError before anything runs."""
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = [sampling_params] * len(prompts) if isinstance(sampling_params, SamplingParams) else list(sampling_params)
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: got {len(params)} for {len(prompts)} prompts")
        results: dict[str, RequestOutput] = {}
        order: list[str] = []
        try:
            for prompt, p in zip(prompts, params):
                rid = f"offline-{next(self._ids)}"
                ids = self.engine.add_request(rid, prompt, p)
                results[rid] = RequestOutput(rid, prompt if isinstance(prompt, str) else None, ids,
                                             [CompletionOutput(i, [], "", None) for i in range(p.n)])
                order.append(rid)
        except ValueError:
            for rid in order:
                self.engine.abort_request(rid)
            while self.engine.has_unfinished_requests():  # drain the abort deltas
                self.engine.step()
            raise
        for delta in self._run(len(order), use_tqdm):
            out = results[delta.request_id]
            comp = out.outputs[delta.index]
            comp.token_ids.extend(delta.new_token_ids)
            comp.text += delta.new_text
            if delta.new_logprobs:
                comp.logprobs = (comp.logprobs or []) + delta.new_logprobs
            if delta.prompt_logprobs is not None and out.prompt_logprobs is None:
                out.prompt_logprobs = list(delta.prompt_logprobs)
            if delta.finished:
                comp.finish_reason, comp.stop_reason = delta.finish_reason, delta.stop_reason
                out.num_cached_tokens = delta.num_cached_tokens
        return [results[rid] for rid in order]

    def _run(self, num_requests: int, use_tqdm: bool) -> Iterator[SequenceDelta]:
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=num_requests, desc="generate", unit="req")
        try:
            while self.engine.has_unfinished_requests():
                before = self.engine.num_unfinished_requests
                yield from self.engine.step().deltas
                if bar is not None:
                    bar.update(before - self.engine.num_unfinished_requests)
        finally:
            if bar is not None:
                bar.close()
