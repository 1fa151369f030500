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
from galley.core.checks import at_least, boolean, choice, int_at_least, output_folder, safe_name
from galley.core.configs import TrainingConfig, dotted, nest
from galley.core.domain.envs import EnvGroupBuilder
from galley.core.domain.types import CheckpointRef
from galley.core.engine import FunctionStage, Stage, Step, Workflow
from galley.core.engine.run import run_workflow
from galley.core.errors import ValidationError
from galley.core.runs.records import CheckpointRecord, DataSplit
from galley.core.runs.summary import Summary, SummaryTable, data_header, number, saved_files
from galley.core.sections import (
    CheckpointSection,
    DataSection,
    EvalSection,
    FormatSection,
    ModelSection,
    OnNonfinite,
    OptimSection,
    PolicySection,
    RewardSection,
    RolloutSection,
    SamplingSection,
)
from galley.core.stages import (
    check_split,
    checkpoint_stage,
    drain,
    evaluate_stage,
    export_sampler,
    init_weights,
    plan_training,
    resume_from_checkpoint,
    save_run_record,
    start_session,
    training_loop,
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
    rollout: RolloutSection = attrs.field(factory=RolloutSection)
    policy: PolicySection = attrs.field(factory=PolicySection)
    checkpoints: CheckpointSection = attrs.field(factory=CheckpointSection)
    evaluation: EvalSection = attrs.field(factory=lambda: EvalSection(eval_every=32))
    sampling: SamplingSection = attrs.field(factory=lambda: SamplingSection(num_samples=4))
    batch_size: int = attrs.field(default=8, validator=int_at_least(1))  # prompts an update
    # Steps to train (each on batch_size rows); unset: num_epochs over the data.
    max_steps: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(1))
    )
    num_epochs: int = attrs.field(default=2, validator=int_at_least(1))  # tiny-instruct: 128 steps
    # Steps submitted before the oldest one's result is read (pipelining).
    submit_ahead: int = attrs.field(default=0, validator=int_at_least(0))
    # Seeds the data order, the held-out split, LoRA's init and sampling.
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    # The blob-store folder runs go in: <output>/<run_id>/.
    output: str = attrs.field(default="runs", validator=output_folder)
    # The run's name (a folder under output); unset: the workflow, date and time.
    run_id: str | None = attrs.field(default=None, validator=attrs.validators.optional(safe_name))
    # Continue run `run_id` from its newest checkpoint that verifies.
    resume: bool = attrs.field(default=False, validator=boolean)
    # A NaN/Inf loss or gradient: "stop" the run naming step and batch, or "skip" the step.
    on_nonfinite: OnNonfinite = choice(OnNonfinite.STOP)
    # Seconds a training call may take before the run stops naming it (0 = wait forever).
    call_timeout_s: float = attrs.field(default=0.0, validator=at_least(0.0))

    CONFIG_VERSION: ClassVar[int] = 2
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _rl_sections,
    }

    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = dotted(
        model=ModelSection,
        data=DataSection,
        render=FormatSection,
        optim=OptimSection,
        reward=RewardSection,
        rollout=RolloutSection,
        policy=PolicySection,
    ) | {"batch_size", "seed"}
    FREE_FIELDS: ClassVar[frozenset[str]] = dotted(
        checkpoints=CheckpointSection, evaluation=EvalSection, sampling=SamplingSection
    ) | {"submit_ahead", "output", "run_id", "resume", "on_nonfinite", "call_timeout_s"}


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


def rl_steps(
    config: RLConfig,
    step: Stage,
    measure: Measure,
    setup: Sequence[Stage] = (),
    *,
    answers: bool = True,
    before_checkpoint: Stage | None = None,
) -> list[Step]:
    """The stages of a run that learns from what it samples: ``setup`` (how batches are made)
    before the run is recorded, then the loop of ``step``s, evaluated by ``measure``; with
    ``answers``, the greedy answers to a few eval prompts before and after."""

    def evaluate(name: str, at: str) -> FunctionStage:
        return evaluate_stage(name, at, measure=measure)

    before = [answers_stage("answers_before", writes="answers_before")] if answers else []
    after = [answers_stage("answers_after", writes="answers_after")] if answers else []
    return [
        load_tasks,
        check_split,
        start_session,
        render_prompts,
        plan_recipe,
        plan_training,
        resume_from_checkpoint,
        init_weights,
        *setup,
        save_run_record,
        evaluate("evaluate_base", at="start_step"),
        *before,
        training_loop(
            step,
            evaluate("evaluate", at="step"),
            config.eval_every,
            config.checkpoint_every,
            before_checkpoint=before_checkpoint,
        ),
        drain,
        evaluate("evaluate_final", at="total_steps"),
        checkpoint_stage("final_checkpoint", at="total_steps"),
        export_sampler,
        *after,
    ]


def build_workflow(config: RLConfig, env: EnvGroupBuilder | None = None) -> Workflow:
    if env is not None:
        return env_workflow(config, env)
    return Workflow(
        "rl",
        rl_steps(
            config,
            rl_step,
            reward_eval,
            (check_rewards, start_reference, plan_rollouts),
            before_checkpoint=settle_sampling,
        ),
        description="Reinforcement learning from rewards (GRPO-style), on- or off-policy.",
    )


def env_workflow(config: RLConfig, env: EnvGroupBuilder) -> Workflow:
    """RL on environments: on-policy, rewards from the environments."""
    for name, value in (
        ("rollout.max_steps_off_policy", config.rollout.max_steps_off_policy),
        ("policy.kl_penalty_coef", config.policy.kl_penalty_coef),
        ("rollout.num_substeps", config.rollout.num_substeps - 1),
    ):
        if value:
            raise ValidationError(f"RLConfig.{name}", "is not built for environments; leave it out")
    return Workflow(
        "rl",
        rl_steps(
            config, env_step_stage(env), env_eval_measure(env), (plan_rollouts,), answers=False
        ),
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
    tables = [SummaryTable(f"run {outcome.run_id}", ("metric", "before", "after"), tuple(rows))]
    if outcome.answers_before and outcome.answers_after:
        answers = tuple(
            (b[0], b[1], f"{b[2]} ({b[3]:.2f})", f"{a[2]} ({a[3]:.2f})")
            for b, a in zip(outcome.answers_before, outcome.answers_after, strict=False)
        )
        tables.append(
            SummaryTable(
                "held-out prompts: before vs after (reward)",
                ("prompt", "expected", "before", "after"),
                answers,
                lines=True,
            )
        )
    return Summary(
        tuple(tables),
        (f"steps: {outcome.steps}",),
        saved_files(outcome.checkpoints, outcome.sampler),
        data_header(outcome.data),
    )
