"""kvserve's engine: paged KV cache, continuous batching, Llama-family models, sampling, offline API."""

from .config import EngineArgs, EngineConfig
from .outputs import CompletionOutput, IterationStats, RequestOutput, SequenceDelta, StepOutput, TokenLogprob
from .sampling_params import ParamError, SamplingParams


def __getattr__(name: str):
    # LLM and LLMEngine pull in the model code; import them lazily so `import engine` stays light.
    if name == "LLM":
        from .llm import LLM

        return LLM
    if name == "LLMEngine":
        from .engine import LLMEngine

        return LLMEngine
    raise AttributeError(name)


__all__ = ["LLM", "LLMEngine", "EngineArgs", "EngineConfig", "SamplingParams", "ParamError", "RequestOutput",
           "CompletionOutput", "SequenceDelta", "StepOutput", "IterationStats", "TokenLogprob"]
