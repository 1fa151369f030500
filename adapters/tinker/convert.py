"""galley's types to and from the ``tinker`` SDK's, and the SDK's errors as galley's.

Token ids and per-token tensors cross as numpy arrays (the SDK's ``TensorData`` holds one), so
no conversion loops over tokens in Python."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
import tinker
from tinker import types as tt

from galley.core.domain.tensors import TensorData
from galley.core.domain.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    OptimStepResult,
    SamplingParams,
)
from galley.core.errors import (
    ConfigError,
    GalleyError,
    NotFoundError,
    TransientError,
    ValidationError,
)

T = TypeVar("T")


def sdk_datum(datum: Datum) -> tt.Datum:
    inputs = {k: tt.TensorData.from_numpy(v.to_numpy()) for k, v in datum.loss_fn_inputs.items()}
    return tt.Datum(
        model_input=tt.ModelInput.from_ints(datum.model_input.token_array.tolist()),
        loss_fn_inputs=inputs,
    )


def galley_output(out: tt.ForwardBackwardOutput) -> ForwardBackwardOutput:
    outputs = [{k: TensorData(v.to_numpy()) for k, v in o.items()} for o in out.loss_fn_outputs]
    return ForwardBackwardOutput(outputs, dict(out.metrics))


def sdk_adam(p: AdamParams) -> tt.AdamParams:
    return tt.AdamParams(
        learning_rate=p.learning_rate,
        beta1=p.beta1,
        beta2=p.beta2,
        eps=p.eps,
        weight_decay=p.weight_decay,
        grad_clip_norm=p.grad_clip_norm,
    )


def sdk_sampling(params: SamplingParams) -> tt.SamplingParams:
    """Stop strings or stop token ids (the API takes one kind per request); ``ignore_eos``
    with no stops is the API's ``stop=[]``."""
    if params.stop and params.stop_token_ids:
        raise ValidationError(
            "SamplingParams", "the tinker adapter takes stop strings or stop token ids, not both"
        )
    stop: list[str] | list[int] | None = None
    if params.stop:
        stop = list(params.stop)
    elif params.stop_token_ids:
        stop = list(params.stop_token_ids)
    elif params.ignore_eos:
        stop = []
    if params.ignore_eos and stop:
        raise ValidationError(
            "SamplingParams", "the tinker adapter can't ignore EOS while stopping elsewhere"
        )
    return tt.SamplingParams(
        max_tokens=params.max_tokens,
        seed=params.seed,
        stop=stop,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
    )


def galley_error(error: BaseException) -> BaseException:
    """The SDK's exception as galley's: what a retry may fix is ``TransientError``; a refused
    request is ``ValidationError`` (or ``NotFoundError``, or ``ConfigError`` for a key the
    service does not accept); anything else is returned as it is."""
    if isinstance(error, GalleyError):
        return error
    message = str(error)
    if isinstance(error, tinker.RequestFailedError):
        if str(error.category).lower().endswith("user"):
            return ValidationError("tinker", message)
        return TransientError(f"the Tinker service failed the request: {message}")
    if isinstance(error, tinker.AuthenticationError | tinker.PermissionDeniedError):
        return ConfigError(f"the Tinker service refused the API key: {message}")
    if isinstance(error, tinker.NotFoundError):
        return NotFoundError(message)
    if isinstance(error, tinker.RateLimitError | tinker.InternalServerError):
        return TransientError(message)
    if isinstance(error, tinker.APIConnectionError | TimeoutError | ConnectionError):
        return TransientError(f"the Tinker service did not answer: {message}")
    if isinstance(error, tinker.APIStatusError):
        return ValidationError("tinker", message)
    return error


def mapped(sdk_future: Any, convert: Callable[[Any], T]) -> Future[T]:
    """A port future of ``convert(result)`` of an SDK future, failing with galley's error."""
    out: Future[T] = Future()

    def done(f: Future[Any]) -> None:
        error = f.exception()
        if error is not None:
            out.set_exception(galley_error(error))
            return
        try:
            out.set_result(convert(f.result()))
        except BaseException as e:  # a conversion failure fails this request only
            out.set_exception(galley_error(e))

    sdk_future.future().add_done_callback(done)
    return out


def failed(error: BaseException) -> Future[Any]:
    out: Future[Any] = Future()
    out.set_exception(error)
    return out


def prompt_ids(tokens: Sequence[int]) -> tt.ModelInput:
    return tt.ModelInput.from_ints(np.asarray(tokens, dtype=np.int64).tolist())


def galley_adam(reply: tt.OptimStepResponse, step: int, params: AdamParams) -> OptimStepResult:
    """The step's result. ``galley serve`` reports the step and the norms (``name:reduction``
    metrics); a service that does not report a norm gives NaN for it, never a made-up 0."""
    metrics = dict(reply.metrics or {})
    return OptimStepResult(
        int(metrics.get("step:max", step)),
        params.learning_rate,
        float(metrics.get("grad_norm:mean", math.nan)),
        float(metrics.get("update_norm:mean", math.nan)),
        metrics,
    )
