"""Grammar compilation with xgrammar, cached by constraint, safe to call from any thread.

`GrammarCompiler.compile(spec)` turns a `StructuredOutputsParams` into an xgrammar `CompiledGrammar` (the
token-level automaton for this model's vocabulary). Compiling a JSON schema takes milliseconds to seconds,
so the HTTP server calls it on a worker thread before it submits the request; the engine's own call in
`add_request` then finds the result in the cache and the engine thread never compiles. The offline `LLM`
compiles on its own thread, once per distinct constraint.

xgrammar is imported on first use only: the engine runs without it (the GPU image need not have it) until a
request asks for structured output. JSON is generated compactly (`any_whitespace=False`: no free whitespace
between tokens), so a model cannot wander off into endless whitespace inside an object.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from ..sampling_params import ParamError
from .spec import StructuredOutputsParams

CACHE_ENTRIES = 256


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...]):
        self._tokenizer, self.vocab_size, self._eos = tokenizer, vocab_size, eos_token_ids
        self._lock = threading.Lock()
        self._xgr_compiler = None
        self._cache: OrderedDict[tuple[str, str], object] = OrderedDict()

    def _compiler(self):
        with self._lock:
            if self._xgr_compiler is None:
                import xgrammar as xgr

                if self._tokenizer is None:
                    raise ParamError("structured_outputs", "structured output needs the model's tokenizer; "
                                                           "this model has none")
                info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=list(self._eos) or None)
                self._xgr_compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._xgr_compiler

    def compile(self, spec: StructuredOutputsParams):
        """The compiled grammar for `spec` (cached); `ParamError("structured_outputs")` if it cannot compile."""
        with self._lock:
            hit = self._cache.get(spec.key)
            if hit is not None:
                self._cache.move_to_end(spec.key)
                return hit
        compiler = self._compiler()
        kind, text = spec.key
        try:
            if kind == "json":
                compiled = compiler.compile_json_schema(text, any_whitespace=False)
            elif kind == "json_object":  # an object, as OpenAI's json_object means (xgrammar's builtin: any value)
                compiled = compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            elif kind == "regex":
                compiled = compiler.compile_regex(text)
            elif kind == "choice":
                compiled = compiler.compile_grammar(choice_grammar(spec.choice))
            else:
                compiled = compiler.compile_grammar(text)
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with its parser's message
            message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ParamError("structured_outputs", f"the {kind.replace('_', ' ')} constraint cannot be compiled: "
                                                   f"{message}") from None
        with self._lock:
            self._cache[spec.key] = compiled
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return compiled

    def cached(self, spec: StructuredOutputsParams) -> bool:
        with self._lock:
            return spec.key in self._cache


def choice_grammar(choices: tuple[str, ...]) -> str:
    """An EBNF grammar whose language is exactly `choices` (each a string literal; JSON escapes are EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
