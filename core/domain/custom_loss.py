"""Any differentiable loss on any TrainingClient, by linearisation.

``forward`` gives the per-token logprobs; the user's function returns the loss and its gradient
with respect to those logprobs; ``forward_backward`` with cross entropy and
``weights = -gradient`` then produces exactly that gradient for the model's parameters, since
d/dθ sum(-logp * -g) = sum(g * dlogp/dθ). Costs one extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.domain.tensors import TensorData
from galley.core.domain.types import Datum, ForwardBackwardOutput
from galley.core.errors import ValidationError

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession

Logprobs = list[npt.NDArray[np.float32]]
# (data, per-datum logprobs) -> (loss, per-datum d loss / d logprobs)
CustomLoss = Callable[[Sequence[Datum], Logprobs], tuple[float, Sequence[npt.ArrayLike]]]


@attrs.frozen
class CustomLossOutput:
    loss: float
    forward: ForwardBackwardOutput
    backward: ForwardBackwardOutput


def linearised_data(data: Sequence[Datum], grads: Sequence[npt.ArrayLike]) -> list[Datum]:
    """The cross-entropy data whose gradient equals the custom loss's: weights = -grad."""
    if len(grads) != len(data):
        raise ValidationError(
            "custom loss gradient", f"{len(grads)} gradients for {len(data)} datums"
        )
    out = []
    for i, (datum, grad) in enumerate(zip(data, grads, strict=True)):
        g = np.asarray(grad, dtype=np.float32)
        if g.shape != (datum.model_input.length,):
            raise ValidationError(
                f"custom loss gradient[{i}]",
                f"shape {g.shape}; expected ({datum.model_input.length},), one entry per token",
            )
        if not np.isfinite(g).all():
            raise ValidationError(f"custom loss gradient[{i}]", "has NaN or Inf entries")
        inputs = {"target_tokens": datum.loss_fn_inputs["target_tokens"], "weights": TensorData(-g)}
        out.append(Datum(datum.model_input, inputs))
    return out


def forward_backward_custom(
    session: TrainingSession, data: Sequence[Datum], loss_fn: CustomLoss
) -> Future[CustomLossOutput]:
    """Accumulate the gradient of ``loss_fn`` into ``session``, like ``forward_backward``.

    Blocks for the forward pass (the loss needs its logprobs), then returns a future of the
    backward pass, so the caller may submit ``optim_step`` before waiting.
    """
    forward = session.forward(list(data), "cross_entropy").result()
    loss, grads = loss_fn(data, forward.logprobs)
    backward = session.forward_backward(linearised_data(data, grads), "cross_entropy")
    result: Future[CustomLossOutput] = Future()

    def finish(done: Future[ForwardBackwardOutput]) -> None:
        error = done.exception()
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(CustomLossOutput(float(loss), forward, done.result()))

    backward.add_done_callback(finish)
    return result
