"""Direct preference optimisation: the losses and metrics of TRL's ``DPOTrainer``, by name.

Every quantity is over a pair's *summed* answer log-probabilities: ``pi`` under the weights
being trained, ``ref`` under the reference weights. With
``h = (pi_c - ref_c) - (pi_r - ref_r)``:

- ``sigmoid``: ``-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)``; ``eps``
  (``label_smoothing``) is the chance that a pair's labels are flipped (conservative DPO);
  ``eps = 0`` is TRL's ``sigmoid``.
- ``ipo``: ``(h' - 1 / (2 * beta)) ** 2``, where ``h'`` is ``h`` with each side's log-ratio
  divided by its answer's token count, as TRL computes it.

The batch loss is the mean over pairs. ``pair_loss`` also returns its gradient with respect
to each pair's ``pi_c`` and ``pi_r``; the per-token gradient is that times the answer's weights,
which is what the linearisation (``galley.core.domain.custom_loss``) trains with on any client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.checks import choice, in_range
from galley.core.errors import ValidationError

Floats = npt.NDArray[np.float64]


class PreferenceLoss(StrEnum):
    SIGMOID = "sigmoid"
    IPO = "ipo"


@attrs.frozen
class PreferenceObjective:
    """Which preference loss, with its β and label smoothing."""

    loss_type: PreferenceLoss = choice(PreferenceLoss.SIGMOID)
    beta: float = attrs.field(default=0.1, validator=in_range(0.0, 1e6, low_open=True))
    label_smoothing: float = attrs.field(default=0.0, validator=in_range(0.0, 0.5, high_open=True))

    def __attrs_post_init__(self) -> None:
        if self.label_smoothing and self.loss_type != PreferenceLoss.SIGMOID:
            raise ValidationError(
                "PreferenceObjective.label_smoothing",
                f"applies to the sigmoid loss only, not {self.loss_type!r}",
            )


def _array(values: Any) -> Floats:
    return np.asarray(values, dtype=np.float64)


@attrs.frozen(eq=False)
class PairLogprobs:
    """Per pair: summed answer log-probabilities under the policy and the reference, and the
    answers' token counts (their summed weights)."""

    chosen: Floats = attrs.field(converter=_array)
    rejected: Floats = attrs.field(converter=_array)
    ref_chosen: Floats = attrs.field(converter=_array)
    ref_rejected: Floats = attrs.field(converter=_array)
    chosen_tokens: Floats = attrs.field(converter=_array)
    rejected_tokens: Floats = attrs.field(converter=_array)

    def __attrs_post_init__(self) -> None:
        n = self.chosen.shape
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if value.shape != n or len(n) != 1:
                raise ValidationError(
                    f"PairLogprobs.{field.name}", f"shape {value.shape}; expected {n}, one per pair"
                )
        if not n[0]:
            raise ValidationError("PairLogprobs", "expected at least one pair")

    @property
    def chosen_logratios(self) -> Floats:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> Floats:
        return self.rejected - self.ref_rejected


def _log_sigmoid(x: Floats) -> Floats:
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: Floats) -> Floats:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def pair_loss(pairs: PairLogprobs, objective: PreferenceObjective) -> tuple[float, Floats, Floats]:
    """The mean loss over pairs and its gradient with respect to each pair's ``pi_c``, ``pi_r``."""
    beta, n = objective.beta, len(pairs.chosen)
    if objective.loss_type == PreferenceLoss.IPO:
        chosen_count = np.maximum(pairs.chosen_tokens, 1.0)
        rejected_count = np.maximum(pairs.rejected_tokens, 1.0)
        gap = pairs.chosen_logratios / chosen_count - pairs.rejected_logratios / rejected_count
        off = gap - 1.0 / (2.0 * beta)
        losses = off**2
        d_gap = 2.0 * off / n
        return float(losses.mean()), d_gap / chosen_count, -d_gap / rejected_count
    eps = objective.label_smoothing
    h = beta * (pairs.chosen_logratios - pairs.rejected_logratios)
    losses = -(1.0 - eps) * _log_sigmoid(h) - eps * _log_sigmoid(-h)
    d_h = beta * (-(1.0 - eps) * _sigmoid(-h) + eps * _sigmoid(h)) / n
    return float(losses.mean()), d_h, -d_h


def preference_metrics(pairs: PairLogprobs, objective: PreferenceObjective) -> dict[str, float]:
    """TRL's DPO metrics, means over pairs: a side's reward is β times its log-ratio to the
    reference; a pair counts as accurate when the chosen reward is strictly higher."""
    chosen = objective.beta * pairs.chosen_logratios
    rejected = objective.beta * pairs.rejected_logratios
    return {
        "loss": pair_loss(pairs, objective)[0],
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/accuracies": float((chosen > rejected).mean()),
        "rewards/margins": float((chosen - rejected).mean()),
        "logps/chosen": float(pairs.chosen.mean()),
        "logps/rejected": float(pairs.rejected.mean()),
    }
