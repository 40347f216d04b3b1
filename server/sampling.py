"""Request model -> engine `SamplingParams`, with errors named as the client spelled the field.

The engine's `SamplingParams` is the one place that checks ranges (temperature in [0, 2], top_p in (0, 1],
n <= MAX_N, ...); a `ParamError` from it becomes a 400 whose `param` is the request field. Fields the server
does not implement never get this far (`unsupported.py` refuses them while the body is parsed); the one
left here is `best_of`, which is fine when it equals n.
"""

from __future__ import annotations

from engine.sampling_params import ParamError, SamplingParams
from engine.structured.spec import StructuredOutputsParams

from .errors import APIError, bad_request
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from .structured import structured_spec


def _unsupported(param: str, what: str) -> APIError:
    return bad_request(param, f"{param}: {what} is not supported by this server", code="unsupported_parameter")


def _common_kwargs(req: SamplingFields) -> dict:
    return dict(n=req.n, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                repetition_penalty=req.repetition_penalty, seed=req.seed, stop=req.stop,
                stop_token_ids=req.stop_token_ids or [], include_stop_str_in_output=req.include_stop_str_in_output,
                ignore_eos=req.ignore_eos, min_tokens=req.min_tokens, skip_special_tokens=req.skip_special_tokens,
                structured_outputs=structured_spec(req)[0], logit_bias=req.logit_bias_ids())


def structured_renames(req: SamplingFields) -> dict[str, str]:
    """The engine's `structured_outputs` is whichever field the client used."""
    param = structured_spec(req)[1]
    return {"structured_outputs": param} if param else {}


def _build(kwargs: dict, renames: dict[str, str]) -> SamplingParams:
    try:
        return SamplingParams(**kwargs)
    except ParamError as e:
        raise engine_param_error(e, renames) from None


def engine_param_error(e: ParamError, renames: dict[str, str] | None = None) -> APIError:
    """An engine ParamError as a 400; `renames` maps engine parameter names to this endpoint's field names."""
    param = (renames or {}).get(e.param, e.param)
    message = str(e)
    if param != e.param and message.startswith(e.param + ":"):
        message = param + message[len(e.param):]
    return bad_request(param, message)


def apply_model_limits(params: SamplingParams, vocab_size: int) -> SamplingParams:
    """Checks that need the model, done on the event loop before the request is queued for the engine (which
    checks them again): out-of-vocabulary stop token ids are a 400 at once. top_k above the vocabulary means
    "no limit", which is what top_k = vocab means."""
    bad = next((t for t in params.stop_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise bad_request("stop_token_ids", f"stop_token_ids: token id {bad} is outside the vocabulary "
                                            f"[0, {vocab_size})")
    if params.top_k > vocab_size:
        params.top_k = vocab_size
    return params


def _check_prompt_logprobs(req: SamplingFields) -> None:
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("prompt_logprobs", "prompt_logprobs: is not available with stream (the prompt's logprobs "
                                             "would all arrive in one chunk); use a non-streaming request")


def completion_prompt_logprobs(req: CompletionRequest) -> int | None:
    """The engine's prompt_logprobs: the request's own, and with echo + logprobs the echoed tokens' top-k."""
    k = req.prompt_logprobs
    if req.echo and req.logprobs is not None:
        k = max(k or 0, req.logprobs)
    if k is None and req.echo and req.max_tokens == 0:
        k = 0  # the engine runs a prefill-only request (max_tokens 0) for the sake of prompt logprobs only
    return k


def completion_params(req: CompletionRequest) -> SamplingParams:
    if req.best_of is not None and req.best_of != req.n:
        raise _unsupported("best_of", "best_of other than n")
    _check_prompt_logprobs(req)
    if req.max_tokens == 0 and not req.echo and req.prompt_logprobs is None:
        raise bad_request("max_tokens", "max_tokens: must be >= 1 (0 is allowed with echo or prompt_logprobs)")
    return _build(dict(_common_kwargs(req), max_tokens=req.max_tokens, logprobs=req.logprobs,
                       prompt_logprobs=completion_prompt_logprobs(req)), structured_renames(req))


def chat_renames(req: ChatCompletionRequest, tool_constraint: StructuredOutputsParams | None = None) -> dict[str, str]:
    """Engine names -> chat field names (the prompt is made of messages; logprobs come as top_logprobs; a forced
    tool call's constraint comes from tool_choice)."""
    max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    structured = {"structured_outputs": "tool_choice"} if tool_constraint is not None else structured_renames(req)
    return {"prompt": "messages", "logprobs": "top_logprobs", "max_tokens": max_field, **structured}


def chat_params(req: ChatCompletionRequest, tool_constraint: StructuredOutputsParams | None = None) -> SamplingParams:
    """`tool_constraint`: the grammar of a forced tool call (`tools.ToolPlan.constraint`), if any."""
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs", "top_logprobs: requires logprobs to be true")
    _check_prompt_logprobs(req)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    kwargs = dict(_common_kwargs(req), max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=req.prompt_logprobs)
    if tool_constraint is not None:
        other = structured_spec(req)[1]
        if other is not None:
            raise bad_request("tool_choice", f"tool_choice: a forced tool call is already constrained output; it "
                                             f"cannot be combined with {other}")
        kwargs["structured_outputs"] = tool_constraint
    return _build(kwargs, chat_renames(req, tool_constraint))
