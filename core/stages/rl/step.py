"""The RL step, held-out rewards, and answers before and after.

A step gets its batch (``group_size`` completions of each of its prompts, scored: see
``sampling``), turns it into datums whose sampled tokens carry the advantages, and submits
``forward_backward`` with the chosen policy loss on the completions of the groups whose
rewards differ."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import numpy as np

from galley.core.domain.batching import BatchPlan
from galley.core.domain.rendering import Renderer
from galley.core.domain.rewards import check_references, resolve_rewards
from galley.core.domain.rl import (
    Task,
    group_advantages,
    normalised_advantages,
    rollout_datum,
    sampled_token_kl,
)
from galley.core.domain.types import Datum, ForwardBackwardOutput
from galley.core.engine import FunctionStage, StageContext, reads_of, stage
from galley.core.runs.layout import RunPaths
from galley.core.sections import SamplingSection
from galley.core.stages.rl.data import RenderedTask
from galley.core.stages.rl.sampling import (
    Prefetch,
    RolloutSampler,
    SampledBatch,
    Scored,
    sample_and_score,
    sampling_params,
)
from galley.core.stages.train import InFlightStep, Pipeline

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
    ``scale_rewards``), plus a KL penalty against the starting weights with a ``reference``."""

    scale_rewards: bool
    normalisation: str
    reference: TrainingSession | None = None
    kl_penalty_coef: float = 0.0

    def __call__(
        self, ctx: StageContext, scored: Scored, step: int
    ) -> tuple[Rollouts, dict[str, float]]:
        rollouts = rollout_data(scored, self.scale_rewards, self.normalisation)
        if self.reference is None or not self.kl_penalty_coef:
            return rollouts, {}
        scoring = self.reference.forward(list(rollouts.data), "cross_entropy")
        reference = ctx.wait(scoring, "training.forward", step).logprobs
        rollouts, kl_ref = with_kl_penalty(rollouts, reference, self.kl_penalty_coef)
        return rollouts, {"kl_ref": kl_ref}


def rollout_metrics(scored: Scored) -> dict[str, float]:
    """TRL's names: mean and spread of the reward, each reward's mean, the share of groups
    with one reward for all, completion length, and entropy estimated from the sampled
    tokens' log-probabilities."""
    lengths = [len(s.tokens) for c in scored.completions for s in c.sequences]
    logprobs = [lp for c in scored.completions for s in c.sequences for lp in s.logprobs]
    kept = group_advantages(scored.total, False)[1]
    metrics = {
        "reward": float(scored.total.mean()),
        "reward_std": float(scored.total.std(axis=1).mean()),
        "frac_reward_zero_std": float(1.0 - kept.mean()),
        "completions/mean_length": float(np.mean(lengths)),
        "entropy": float(-np.mean(logprobs)) if logprobs else 0.0,
    }
    metrics |= {f"rewards/{name}/mean": float(v.mean()) for name, v in scored.per_reward.items()}
    return metrics


def learner_metrics(
    rollouts: Rollouts, output: ForwardBackwardOutput, clip: tuple[float, float]
) -> dict[str, float]:
    """What the learner's log-probabilities of the sampled tokens say: the KL from the sampler
    (about 0 on-policy) and the share of tokens whose ratio falls outside the clip range."""
    sampler = rollouts.sampled([d.loss_fn_inputs["logprobs"].data for d in rollouts.data])
    learner = rollouts.sampled(output.logprobs)
    ratio = np.exp(np.concatenate(learner) - np.concatenate(sampler)) if learner else np.ones(0)
    clipped = float(np.mean((ratio < clip[0]) | (ratio > clip[1]))) if ratio.size else 0.0
    return {"kl": sampled_token_kl(sampler, learner), "clip_ratio": clipped}


def submit_policy_gradient(
    session: TrainingSession,
    rollouts: Rollouts,
    loss_fn: str,
    clip: tuple[float, float],
    step: int,
    started: float,
    rows: Sequence[int],
    metrics: dict[str, float],
) -> InFlightStep:
    """Submit ``loss_fn`` on the rollouts (not waiting) as step ``step`` in flight: recorded
    with ``metrics`` and, once it is done, the learner's KL to the sampler and clip ratio."""
    data = list(rollouts.data)
    config = {"clip_low_threshold": clip[0], "clip_high_threshold": clip[1]}
    future = session.forward_backward(
        data, loss_fn, None if loss_fn == "importance_sampling" else config
    )
    return InFlightStep(
        step,
        future,
        None,
        sum(d.model_input.length for d in data),
        started,
        tuple(rows),
        metrics=metrics,
        output_metrics=lambda output: learner_metrics(rollouts, output, clip),
    )


@stage(
    writes=("rollout_sampler", "prefetch", "sampled", "advantages"),
)
def plan_rollouts(
    ctx: StageContext,
    train_data: Sequence[RenderedTask],
    batch_plan: BatchPlan,
    chat_renderer: Renderer,
    rewards: Sequence[str],
    reward_weights: Sequence[float],
    group_size: int,
    max_tokens: int,
    temperature: float,
    scale_rewards: bool,
    num_substeps: int,
    total_steps: int,
    seed: int,
    paths: RunPaths,
    loss_normalisation: str,
    reference_session: TrainingSession | None,
    kl_penalty_coef: float,
    train_rows: Sequence[Task],
    eval_rows: Sequence[Task],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
) -> dict[str, Any]:
    """Fix how each step's batch is sampled, scored, recorded and turned into advantages
    (``RewardAdvantages``); nothing is sampled yet. Rows a reward cannot score are refused
    here, before the run is recorded."""
    resolved = resolve_rewards(rewards, reward_weights)
    check_references(resolved, {"train": train_rows, "eval": eval_rows}, row_origins)
    sampler = RolloutSampler(
        train_data,
        batch_plan,
        chat_renderer,
        resolved,
        group_size,
        max_tokens,
        temperature,
        seed,
        scale_rewards,
        paths,
        num_substeps,
        total_steps,
    )
    advantages = RewardAdvantages(
        scale_rewards, loss_normalisation, reference_session, kl_penalty_coef
    )
    return {
        "rollout_sampler": sampler,
        "prefetch": (),
        "sampled": None,
        "advantages": advantages,
    }


@stage(
    writes=("pipeline", "prefetch", "sampled"),
    ports=("training", "blobs"),
)
def rl_step(
    ctx: StageContext,
    session: TrainingSession,
    rollout_sampler: RolloutSampler,
    prefetch: tuple[Prefetch, ...],
    sampled: SampledBatch | None,
    step: int,
    total_steps: int,
    pipeline: Pipeline,
    advantages: Advantages,
    max_steps_off_policy: int,
    loss_fn: str,
    clip_low_threshold: float,
    clip_high_threshold: float,
) -> dict[str, Any]:
    """Submit the policy gradient of step ``step``'s batch (not waiting for the backward).
    On-policy, the batch is sampled now, from the weights after every step before it. With
    ``max_steps_off_policy = k``, the batches of the next k steps are sampled in a thread
    while this one trains, from the weights this step started from (each batch at most k
    updates stale); a resumed run reads back the batches recorded before its checkpoint.
    With ``num_substeps`` above 1, a batch sampled at one step serves that many, each
    training on its own prompts."""
    started = time.perf_counter()
    handed_over = started  # when this step's completer had its weights
    blobs = ctx.adapters.blobs
    first = rollout_sampler.first_step(step)
    if sampled is None or sampled.step != first:
        batch = None
        waiting = next((p for p in prefetch if p.step == first), None)
        if waiting is not None:
            batch = ctx.wait(waiting.future, "rl.sample_ahead", step)
        elif max_steps_off_policy or step != first:  # a resumed run: recorded before
            batch = rollout_sampler.read(step, blobs)
        if batch is None:
            completer = ctx.wait(
                session.save_weights_and_get_sampling_client(), "training.sampling_client", step
            )
            handed_over = time.perf_counter()
            batch = rollout_sampler.sample(completer, step, blobs)
        sampled = SampledBatch(first, batch)
    scored = rollout_sampler.minibatch(sampled.scored, step)
    sampled_at = time.perf_counter()
    rollouts, extra = advantages(ctx, scored, step)
    metrics = rollout_metrics(scored) | extra
    # Waiting for the steps before to train (and the weights' handoff), then sampling and
    # scoring (or waiting for a batch sampled ahead).
    metrics["time/waiting_s"] = handed_over - started
    metrics["time/sampling_s"] = sampled_at - handed_over
    rows = rollout_sampler.batch_plan.indices(step - 1).tolist()
    clip = (clip_low_threshold, clip_high_threshold)
    entry = submit_policy_gradient(session, rollouts, loss_fn, clip, step, started, rows, metrics)
    ahead = tuple(p for p in prefetch if p.step > first)
    wanted = [
        s
        for s in rollout_sampler.batches_ahead(step, max_steps_off_policy)
        if s not in {p.step for p in ahead} and not blobs.exists(rollout_sampler.key(s))
    ]
    if wanted:
        # Queued after this step's gradient, before its update: this step's starting weights.
        handoff = session.save_weights_and_get_sampling_client()
        ahead += rollout_sampler.sample_ahead(handoff, wanted, blobs)
    in_flight = pipeline.with_in_flight((*pipeline.in_flight, entry))
    return {"pipeline": in_flight, "prefetch": ahead, "sampled": sampled}


@stage(ports=("training",))
def settle_sampling(ctx: StageContext, prefetch: tuple[Prefetch, ...]) -> dict[str, Any]:
    """Wait for the batches being sampled ahead to be scored and recorded: before a
    checkpoint, so a run resumed from it finds the batches its next steps train on."""
    for ahead in prefetch:
        ctx.wait(ahead.future, "rl.sample_ahead", ahead.step)
    return {}


def greedy_answers(
    ctx: StageContext,
    session: TrainingSession,
    tasks: Sequence[RenderedTask],
    chat_renderer: Renderer,
    rewards: Sequence[str],
    reward_weights: Sequence[float],
    max_tokens: int,
) -> Scored:
    sampler = ctx.wait(session.save_weights_and_get_sampling_client(), "training.sampling_client")
    params = sampling_params(chat_renderer, max_tokens, 0.0, 0)
    return sample_and_score(sampler, tasks, params, 1, resolve_rewards(rewards, reward_weights))


def reward_eval(
    ctx: StageContext,
    session: TrainingSession,
    eval_data: Sequence[RenderedTask],
    chat_renderer: Renderer,
    rewards: Sequence[str],
    reward_weights: Sequence[float],
    max_tokens: int,
) -> dict[str, float]:
    """Held-out rewards: the mean reward of the greedy answer to each eval prompt, in total
    and per reward function."""
    scored = greedy_answers(
        ctx, session, eval_data, chat_renderer, rewards, reward_weights, max_tokens
    )
    metrics = {"eval/reward": float(scored.total.mean())}
    return metrics | {f"eval/rewards/{k}": float(v.mean()) for k, v in scored.per_reward.items()}


def answers_stage(name: str, writes: str) -> FunctionStage:
    """A stage keeping the greedy answers to the first ``num_samples`` eval prompts (with
    their rewards) under ``writes``: the summary shows them before and after training."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        eval_data: Sequence[RenderedTask],
        chat_renderer: Renderer,
        rewards: Sequence[str],
        reward_weights: Sequence[float],
        max_tokens: int,
        sampling: SamplingSection,
    ) -> dict[str, Any]:
        tasks = list(eval_data[: sampling.num_samples])
        if not tasks:
            return {writes: ()}
        scored = greedy_answers(
            ctx, session, tasks, chat_renderer, rewards, reward_weights, max_tokens
        )
        answers = tuple(
            (t.task.prompt.messages[-1].content, t.task.reference or "", text, float(r))
            for t, text, r in zip(tasks, scored.texts, scored.total[:, 0], strict=True)
        )
        return {writes: answers}

    return FunctionStage(
        name,
        run,
        reads=reads_of(run),
        writes=(writes,),
        ports=("training",),
        doc="Greedy answers to the first `num_samples` eval prompts, with their rewards.",
    )
