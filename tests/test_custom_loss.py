"""Custom losses by linearisation, on the noop adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from galley.adapters.noop import NoopBlobStore, NoopTrainingClient
from galley.core import AdamParams, Datum, SessionConfig, ValidationError, forward_backward_custom
from galley.ports import TrainingSession


def session() -> TrainingSession:
    return NoopTrainingClient(NoopBlobStore()).start_session(SessionConfig("m"))


def batch(s: TrainingSession) -> list[Datum]:
    return [
        Datum.from_tokens(s.tokenizer.encode(t), [0.0] + [1.0] * (len(t) - 1))
        for t in ("abcdef", "xyz")
    ]


def weighted_nll(
    data: Sequence[Datum], logprobs: list[npt.NDArray[np.float32]]
) -> tuple[float, list[npt.NDArray[np.float64]]]:
    weights = [d.loss_fn_inputs["weights"].data.astype(np.float64) for d in data]
    loss = -sum(float((w * lp).sum()) for w, lp in zip(weights, logprobs, strict=True))
    return loss, [-w for w in weights]


def test_custom_cross_entropy_trains_exactly_like_the_builtin() -> None:
    a, b = session(), session()
    data = batch(a)
    for _ in range(3):
        out = forward_backward_custom(a, data, weighted_nll).result()
        a.optim_step(AdamParams(learning_rate=1e-2)).result()
        ref = b.forward_backward(data).result()
        b.optim_step(AdamParams(learning_rate=1e-2)).result()
        assert out.loss == pytest.approx(ref.metrics["loss:sum"])
    assert a.parameters() == pytest.approx(b.parameters())  # type: ignore[attr-defined]


def test_a_preference_loss_moves_the_model_along_its_gradient() -> None:
    """A DPO-style loss on (chosen, rejected): a step must lower it."""
    s = session()
    data = batch(s)

    def preference(
        data: Sequence[Datum], lps: list[npt.NDArray[np.float32]]
    ) -> tuple[float, list[npt.NDArray[np.float64]]]:
        margin = float(lps[0].sum() - lps[1].sum())
        sig = 1 / (1 + np.exp(-margin))
        loss = -np.log(sig)
        g = -(1 - sig)  # dloss/dmargin
        return float(loss), [np.full(lps[0].shape, g), np.full(lps[1].shape, -g)]

    first = forward_backward_custom(s, data, preference).result().loss
    s.optim_step(AdamParams(learning_rate=1e-3)).result()
    second = forward_backward_custom(s, data, preference).result().loss
    assert second != first
    # Linearisation check: the surrogate's gradient equals the custom one, so one step moves
    # the loss the way the custom gradient says.
    assert np.sign(second - first) == -1 or abs(second - first) < 1e-9


def test_gradients_of_the_wrong_shape_are_refused() -> None:
    s = session()
    data = batch(s)
    with pytest.raises(ValidationError, match=r"gradient\[1\].*shape"):
        forward_backward_custom(
            s, data, lambda d, lps: (0.0, [np.zeros(lps[0].shape), np.zeros(5)])
        ).result()
    with pytest.raises(ValidationError, match="1 gradients for 2 datums"):
        forward_backward_custom(s, data, lambda d, lps: (0.0, [np.zeros(lps[0].shape)])).result()


def test_a_jax_loss_gives_its_gradient_through_custom_loss_from_jax() -> None:
    """``custom_loss_from_jax`` differentiates a plain JAX loss of the logprobs: weighted NLL
    written in JAX trains exactly like the numpy one above."""
    import jax.numpy as jnp

    from galley.adapters.jax.losses import custom_loss_from_jax

    def jax_nll(data: Sequence[Datum], lps: list[Any]) -> Any:
        return -sum(
            (jnp.asarray(d.loss_fn_inputs["weights"].data) * lp).sum()
            for d, lp in zip(data, lps, strict=True)
        )

    a, b = session(), session()
    data = batch(a)
    for _ in range(3):
        out = forward_backward_custom(a, data, custom_loss_from_jax(jax_nll)).result()
        a.optim_step(AdamParams(learning_rate=1e-2)).result()
        ref = forward_backward_custom(b, data, weighted_nll).result()
        b.optim_step(AdamParams(learning_rate=1e-2)).result()
        assert out.loss == pytest.approx(ref.loss, rel=1e-5)
    assert a.parameters() == pytest.approx(b.parameters(), rel=1e-5)  # type: ignore[attr-defined]
