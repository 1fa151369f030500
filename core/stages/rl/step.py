"""The RL step, held-out rewards, and answers before and after.

A step gets its batch (``group_size`` completions of each of its prompts, scored: see
``sampling``), turns it into datums whose sampled tokens carry the advantages (see
``advantages``), and submits
``forward_backward`` with the chosen policy loss on the completions of the groups whose
rewards differ."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from galley.core.domain.batching import BatchPlan
from galley.core.domain.rl import PolicyLoss, group_advantages, sampled_token_kl
from galley.core.domain.types import ForwardBackwardOutput
from galley.core.engine import FunctionStage, StageContext, reads_of, stage
from galley.core.runs.layout import RunPaths
from galley.core.sections import PolicySection, SamplingSection
from galley.core.stages.rl.advantages import Advantages, Rollouts
from galley.core.stages.rl.data import RenderedTask
from galley.core.stages.rl.sampling import (
    RolloutBatches,
    RolloutRecipe,
    RolloutSampler,
    SampledBatch,
    Scored,
    sample_and_score,
)
from galley.core.stages.train import InFlightStep, Pipeline

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


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
    policy: PolicySection,
    step: int,
    started: float,
    rows: Sequence[int],
    metrics: dict[str, float],
) -> InFlightStep:
    """Submit ``policy.loss_fn`` on the rollouts (not waiting) as step ``step`` in flight:
    recorded with ``metrics`` and, once it is done, the learner's KL to the sampler and clip
    ratio."""
    data, clip, loss_fn = list(rollouts.data), policy.clip, policy.loss_fn
    config = {"clip_low_threshold": clip[0], "clip_high_threshold": clip[1]}
    future = session.forward_backward(
        data, loss_fn, None if loss_fn == PolicyLoss.IMPORTANCE_SAMPLING else config
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
    writes=("batches",),
)
def plan_rollouts(
    ctx: StageContext,
    train_data: Sequence[RenderedTask],
    batch_plan: BatchPlan,
    total_steps: int,
    recipe: RolloutRecipe,
    policy: PolicySection,
    paths: RunPaths,
) -> dict[str, Any]:
    """Fix how each step's batch is sampled, scored and recorded (``RolloutSampler``);
    nothing is sampled yet."""
    sampler = RolloutSampler(
        train_data, batch_plan, recipe, policy.scale_rewards, paths, total_steps
    )
    return {"batches": RolloutBatches(sampler)}


@stage(
    writes=("pipeline", "batches"),
    ports=("training", "blobs"),
)
def rl_step(
    ctx: StageContext,
    session: TrainingSession,
    batches: RolloutBatches,
    advantages: Advantages,
    policy: PolicySection,
    step: int,
    pipeline: Pipeline,
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
    blobs, sampler, sampled = ctx.adapters.blobs, batches.sampler, batches.sampled
    first = sampler.first_step(step)
    if sampled is None or sampled.step != first:
        batch = None
        waiting = next((p for p in batches.ahead if p.step == first), None)
        if waiting is not None:
            batch = ctx.wait(waiting.future, "rl.sample_ahead", step)
        elif sampler.recipe.rollout.max_steps_off_policy or step != first:  # resumed: recorded
            batch = sampler.read(step, blobs)
        if batch is None:
            completer = ctx.wait(
                session.save_weights_and_get_sampling_client(), "training.sampling_client", step
            )
            handed_over = time.perf_counter()
            batch = sampler.sample(completer, step, blobs)
        sampled = SampledBatch(first, batch)
    scored = sampler.minibatch(sampled.scored, step)
    sampled_at = time.perf_counter()
    rollouts, extra = advantages(ctx, scored, step)
    metrics = rollout_metrics(scored) | extra
    # Waiting for the steps before to train (and the weights' handoff), then sampling and
    # scoring (or waiting for a batch sampled ahead).
    metrics["time/waiting_s"] = handed_over - started
    metrics["time/sampling_s"] = sampled_at - handed_over
    rows = sampler.batch_plan.indices(step - 1).tolist()
    entry = submit_policy_gradient(session, rollouts, policy, step, started, rows, metrics)
    ahead = tuple(p for p in batches.ahead if p.step > first)
    wanted = [
        s
        for s in sampler.batches_ahead(step)
        if s not in {p.step for p in ahead} and not blobs.exists(sampler.key(s))
    ]
    if wanted:
        # Queued after this step's gradient, before its update: this step's starting weights.
        handoff = session.save_weights_and_get_sampling_client()
        ahead += sampler.sample_ahead(handoff, wanted, blobs)
    in_flight = pipeline.with_in_flight((*pipeline.in_flight, entry))
    return {"pipeline": in_flight, "batches": RolloutBatches(sampler, sampled, ahead)}


@stage(ports=("training",))
def settle_sampling(ctx: StageContext, batches: RolloutBatches) -> dict[str, Any]:
    """Wait for the batches being sampled ahead to be scored and recorded: before a
    checkpoint, so a run resumed from it finds the batches its next steps train on."""
    for ahead in batches.ahead:
        ctx.wait(ahead.future, "rl.sample_ahead", ahead.step)
    return {}


def greedy_answers(
    ctx: StageContext,
    session: TrainingSession,
    tasks: Sequence[RenderedTask],
    recipe: RolloutRecipe,
) -> Scored:
    sampler = ctx.wait(session.save_weights_and_get_sampling_client(), "training.sampling_client")
    return sample_and_score(sampler, tasks, recipe.greedy, 1, recipe.rewards)


def reward_eval(
    ctx: StageContext,
    session: TrainingSession,
    eval_data: Sequence[RenderedTask],
    recipe: RolloutRecipe,
) -> dict[str, float]:
    """Held-out rewards: the mean reward of the greedy answer to each eval prompt, in total
    and per reward function."""
    scored = greedy_answers(ctx, session, eval_data, recipe)
    metrics = {"eval/reward": float(scored.total.mean())}
    return metrics | {f"eval/rewards/{k}": float(v.mean()) for k, v in scored.per_reward.items()}


def answers_stage(name: str, writes: str) -> FunctionStage:
    """A stage keeping the greedy answers to the first ``num_samples`` eval prompts (with
    their rewards) under ``writes``: the summary shows them before and after training."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        eval_data: Sequence[RenderedTask],
        recipe: RolloutRecipe,
        sampling: SamplingSection,
    ) -> dict[str, Any]:
        tasks = list(eval_data[: sampling.num_samples])
        if not tasks:
            return {writes: ()}
        scored = greedy_answers(ctx, session, tasks, recipe)
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
