"""kvserve's engine: paged KV cache, continuous batching, Llama-family models, sampling, offline API.

Only the plain-data modules are imported eagerly; everything that needs torch or transformers is imported
on first use, so `import engine` (and e.g. the capacity planner) stays light.
"""

from .outputs import CompletionOutput, IterationStats, RequestOutput, SequenceDelta, StepOutput, TokenLogprob
from .sampling_params import ParamError, SamplingParams

_LAZY = {"LLM": ".llm", "LLMEngine": ".engine", "EngineArgs": ".config", "EngineConfig": ".config"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = ["LLM", "LLMEngine", "EngineArgs", "EngineConfig", "SamplingParams", "ParamError", "RequestOutput",
           "CompletionOutput", "SequenceDelta", "StepOutput", "IterationStats", "TokenLogprob"]
