"""The numpy reference losses: values as defined in reference.md §1, exact gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.core import LossFn, ValidationError, reference_loss

arrays = st.integers(1, 8).flatmap(
    lambda n: st.tuples(
        *(
            st.lists(st.floats(lo, hi), min_size=n, max_size=n)
            for lo, hi in ((-5, -0.01), (-5, -0.01), (-2, 2), (0, 1))
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(arrays, st.sampled_from(list(LossFn)))
def test_gradient_matches_finite_differences(values: tuple[list[float], ...], loss: LossFn) -> None:
    logp, logq, adv, w = (np.asarray(v) for v in values)
    inputs = {"logprobs": logq, "advantages": adv, "weights": w}
    _, grad = reference_loss(loss, logp, inputs)
    eps = 1e-6
    for i in range(len(logp)):
        up, down = logp.copy(), logp.copy()
        up[i] += eps
        down[i] -= eps
        ratio = np.exp(logp[i] - logq[i])
        if loss in (LossFn.PPO,) and min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-4:
            continue  # the kink of the clip
        numeric = (reference_loss(loss, up, inputs)[0] - reference_loss(loss, down, inputs)[0]) / (
            2 * eps
        )
        if loss is LossFn.CISPO:
            # CISPO stops the gradient through the clipped ratio: d/dlogp of -c*logp*A is -c*A.
            numeric = -np.clip(ratio, 0.8, 1.2) * adv[i]
        assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-6)


def test_values() -> None:
    logp = np.log(np.asarray([0.5, 0.25]))
    assert reference_loss(LossFn.CROSS_ENTROPY, logp, {"weights": np.asarray([1.0, 0.0])})[
        0
    ] == pytest.approx(np.log(2))
    assert reference_loss(LossFn.CROSS_ENTROPY, logp, {})[0] == pytest.approx(
        np.log(8)
    )  # weights default to 1
    same = {"logprobs": logp, "advantages": np.asarray([2.0, -1.0])}
    assert reference_loss(LossFn.IMPORTANCE_SAMPLING, logp, same)[0] == pytest.approx(-1.0)
    # PPO: ratio 2 with A>0 is clipped to 1.2 (no gradient); ratio 2 with A<0 is not clipped.
    far = {"logprobs": logp - np.log(2.0), "advantages": np.asarray([1.0, -1.0])}
    loss, grad = reference_loss(LossFn.PPO, logp, far)
    assert loss == pytest.approx(-(1.2 - 2.0))
    assert grad.tolist() == pytest.approx([0.0, 2.0])
    loss, grad = reference_loss(
        LossFn.CISPO, logp, far, {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}
    )
    assert grad.tolist() == pytest.approx([-1.5, 1.5])


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="unknown key"):
        reference_loss(
            LossFn.PPO,
            np.zeros(1),
            {"logprobs": np.zeros(1), "advantages": np.zeros(1)},
            {"epsilon": 0.2},
        )
    with pytest.raises(ValidationError, match="clip_low_threshold <= 1"):
        reference_loss(
            LossFn.PPO,
            np.zeros(1),
            {"logprobs": np.zeros(1), "advantages": np.zeros(1)},
            {"clip_low_threshold": 1.5},
        )
