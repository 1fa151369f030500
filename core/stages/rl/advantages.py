"""How a step's scored batch becomes training data: one datum per completion whose sampled
tokens carry its advantage (``Rollouts``); GRPO's advantages from the rewards, with an
optional KL penalty against the starting weights (``RewardAdvantages``, opened by
``start_reference``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import numpy as np

from galley.core.domain.rl import group_advantages, normalised_advantages, rollout_datum
from galley.core.domain.types import Datum
from galley.core.engine import StageContext, stage
from galley.core.runs.layout import RunPaths
from galley.core.runs.sessions import run_session_config
from galley.core.sections import ModelSection, PolicySection
from galley.core.stages.checkpoint import load_init_from
from galley.core.stages.rl.sampling import Scored

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@attrs.frozen
class Rollouts:
    """A step's training data: one datum per completion (prompt-major), its sampled token
    count, the factor its advantage was scaled by (0 for a left-out group's), and every
    completion's advantage with the groups kept."""

    data: tuple[Datum, ...]
    lengths: tuple[int, ...]
    factors: tuple[float, ...]
    advantages: np.ndarray[Any, Any]
    kept: np.ndarray[Any, Any]

    def sampled(self, per_token: Sequence[Any]) -> list[np.ndarray[Any, Any]]:
        """Of each datum's per-token values, those of its sampled tokens (its last ones)."""
        return [np.asarray(v)[len(v) - n :] for v, n in zip(per_token, self.lengths, strict=True)]


def rollout_data(
    scored: Scored, scale_rewards: bool, normalisation: str, *, rewarded: bool = True
) -> Rollouts:
    """Every completion becomes a datum, so a step's batch has one shape (no recompiles as the
    kept share changes), but a left-out group's carry a zero advantage and do not count in the
    normalisation: the gradient is that of the kept groups alone. Not ``rewarded``, every
    completion counts, with advantage 0 (for per-token advantages: ``add_token_advantages``)."""
    if rewarded:
        advantages, kept = group_advantages(scored.total, scale_rewards)
    else:
        advantages, kept = np.zeros(scored.total.shape), np.ones(len(scored.total), bool)
    rows = [
        (p, s)
        for p in range(len(scored.tasks))
        for s in range(advantages.shape[1])
        if scored.completions[p].sequences[s].tokens
    ]
    kept_rows = [(p, s) for p, s in rows if kept[p]]
    kept_lengths = [len(scored.completions[p].sequences[s].tokens) for p, s in kept_rows]
    ones = [1.0] * len(kept_rows)
    factors = dict(
        zip(kept_rows, normalised_advantages(ones, kept_lengths, normalisation), strict=True)
    )
    data, lengths, scales = [], [], []
    for p, s in rows:
        sequence = scored.completions[p].sequences[s]
        factor = factors.get((p, s), 0.0)
        prompt = scored.completions[p].prompt_tokens
        advantage = float(advantages[p, s]) * factor
        data.append(rollout_datum(prompt, sequence.tokens, sequence.logprobs, advantage))
        lengths.append(len(sequence.tokens))
        scales.append(factor)
    return Rollouts(tuple(data), tuple(lengths), tuple(scales), advantages, kept)


def add_token_advantages(rollouts: Rollouts, extra: Sequence[Any]) -> Rollouts:
    """The rollouts with each completion's sampled tokens' advantages raised by ``extra`` (an
    array per completion), scaled as the completion's advantage is."""
    data = []
    for datum, more, factor, n in zip(
        rollouts.data, extra, rollouts.factors, rollouts.lengths, strict=True
    ):
        advantages = datum.loss_fn_inputs["advantages"].data.copy()
        advantages[len(advantages) - n :] += (factor * np.asarray(more)).astype(np.float32)
        data.append(
            attrs.evolve(datum, loss_fn_inputs={**datum.loss_fn_inputs, "advantages": advantages})
        )
    return attrs.evolve(rollouts, data=tuple(data))


def with_kl_penalty(
    rollouts: Rollouts, reference_logprobs: Sequence[Any], coef: float
) -> tuple[Rollouts, float]:
    """The rollouts with each sampled token's advantage raised by
    ``coef * (mean_d - d)``, scaled as its completion's advantage is, where ``d`` is the
    token's sampler log-probability minus the reference's (tokens the reference finds less
    likely than the sampler did are pushed down); and ``mean_d``, the batch's estimate of
    KL(sampler || reference) per token, recorded as ``kl_ref``."""
    sampler = rollouts.sampled([d.loss_fn_inputs["logprobs"].data for d in rollouts.data])
    reference = rollouts.sampled(reference_logprobs)
    diffs = [
        np.asarray(s, np.float64) - np.asarray(r, np.float64)
        for s, r in zip(sampler, reference, strict=True)
    ]
    weighted = [(d, f) for d, f in zip(diffs, rollouts.factors, strict=True) if f]
    mean = float(np.mean(np.concatenate([d for d, _ in weighted]))) if weighted else 0.0
    return add_token_advantages(rollouts, [coef * (mean - diff) for diff in diffs]), mean


class Advantages(Protocol):
    """How a step's scored batch becomes training data: the rollouts and metrics of their
    own (``kl_ref``, ``teacher_kl``)."""

    def __call__(
        self, ctx: StageContext, scored: Scored, step: int
    ) -> tuple[Rollouts, dict[str, float]]: ...


@attrs.frozen
class RewardAdvantages:
    """GRPO's: each completion's reward minus its group's mean (over the group's std with
    ``policy.scale_rewards``), plus a KL penalty against the starting weights, held by a
    ``reference`` session, with ``policy.kl_penalty_coef``."""

    policy: PolicySection
    reference: TrainingSession | None = None

    def __call__(
        self, ctx: StageContext, scored: Scored, step: int
    ) -> tuple[Rollouts, dict[str, float]]:
        policy = self.policy
        rollouts = rollout_data(scored, policy.scale_rewards, policy.loss_normalisation)
        if self.reference is None or not policy.kl_penalty_coef:
            return rollouts, {}
        scoring = self.reference.forward(list(rollouts.data), "cross_entropy")
        reference = ctx.wait(scoring, "training.forward", step).logprobs
        rollouts, kl_ref = with_kl_penalty(rollouts, reference, policy.kl_penalty_coef)
        return rollouts, {"kl_ref": kl_ref}


@stage(
    writes=("advantages",),
    ports=("training", "blobs"),
)
def start_reference(
    ctx: StageContext,
    policy: PolicySection,
    model: ModelSection,
    seed: int,
    paths: RunPaths,
    micro_batch_size: int,
) -> dict[str, Any]:
    """The advantages of reward-trained RL (``RewardAdvantages``). With a KL penalty, they
    hold a second session with the weights the run started from (its base model, or
    ``init_from``), to score sampled tokens against; a resumed run rebuilds it the same way."""
    if not policy.kl_penalty_coef:
        return {"advantages": RewardAdvantages(policy)}
    config = run_session_config(model, seed, paths, "reference", micro_batch_size=micro_batch_size)
    session = ctx.adapters.training.start_session(config)
    if model.init_from:
        load_init_from(ctx, session, model.init_from, paths)
    ctx.log.info("reference.started", model=model.base_model, init_from=model.init_from)
    return {"advantages": RewardAdvantages(policy, session)}
