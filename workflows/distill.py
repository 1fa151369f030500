"""Distillation from a teacher: ``galley run distill --set teacher=RUN``.

On-policy (the default), RL's loop with the teacher in place of rewards:

load_tasks -> check_split -> start_session -> render_prompts -> plan_recipe -> plan_training
-> resume_from_checkpoint -> init_weights -> check_rewards -> start_reference (no KL)
-> plan_rollouts -> start_teacher -> save_run_record -> evaluate_base -> answers_before
train loop: rl_step -> optim_step -> collect_results [-> evaluate] [-> settle_sampling
-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler -> answers_after

Each step the student samples ``group_size`` answers to each of ``batch_size`` prompts; the
teacher scores the student's tokens, and each token's advantage is the teacher's
log-probability minus the student's (``galley.core.domain.distillation``), trained with
``importance_sampling``. The rewards (exact match by default) are measured, not trained on.

Off-policy (``mode=off_policy``): the teacher's greedy answers to the prompts are written as a
chat dataset under the run, for ``galley run sft --set dataset=<that folder>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar

import attrs

from galley.core.adapter_set import Adapters
from galley.core.checks import choice, int_at_least
from galley.core.configs import nest
from galley.core.domain.weights_source import WeightsSource, optional_source
from galley.core.engine import Workflow
from galley.core.engine.run import run_workflow
from galley.core.errors import ValidationError
from galley.core.runs.records import DataSplit
from galley.core.runs.summary import Summary, SummaryTable, number
from galley.core.sections import EvalSection, RewardSection, RolloutSection
from galley.core.stages import check_split, save_run_record, start_session
from galley.core.stages.rl import (
    answers_stage,
    check_rewards,
    load_tasks,
    plan_recipe,
    plan_rollouts,
    render_prompts,
    rl_step,
    settle_sampling,
    start_reference,
)
from galley.core.stages.rl.teacher import distill_eval, start_teacher, write_teacher_dataset
from galley.workflows.rl import RLConfig, RLResult, rl_parts
from galley.workflows.rl import summarize as summarize_rl
from galley.workflows.skeleton import training_steps

SFT_ON = "galley run sft --set dataset={}"

# What `galley workflows` says of it, and its Workflow.
DESCRIPTION = (
    "Distillation from a teacher run or model: on-policy (the teacher grades the student's "
    "tokens) or off-policy (the teacher's answers as an SFT dataset)."
)


class DistillMode(StrEnum):
    ON_POLICY = "on_policy"  # the teacher grades the student's samples, token by token
    OFF_POLICY = "off_policy"  # the teacher's answers become an SFT dataset


def _teacher(value: Any) -> WeightsSource | None:
    return optional_source(value, "teacher")


def _rl_sections(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the rewards', the rollouts' and the policy's settings flat."""
    return nest(DistillConfig, v1)


@attrs.frozen(init=False)
class DistillConfig(RLConfig):  # type: ignore[override]  # new defaults reorder fields
    """An RL config with a teacher instead of rewards to learn from; every setting has a
    default but ``teacher``, which the run asks for (a run id, a checkpoint's key, a model
    folder or a Hub id)."""

    # What the student learns from: a run id, a checkpoint key, a model folder or a Hub id.
    teacher: WeightsSource | None = attrs.field(default=None, converter=_teacher)
    # "on_policy": the teacher grades the student's samples; "off_policy": the teacher's answers
    # become an SFT dataset.
    mode: DistillMode = choice(DistillMode.ON_POLICY)
    # Measured on the student's answers, not trained on.
    reward: RewardSection = attrs.field(factory=lambda: RewardSection(rewards=("exact_match",)))
    # 8 completions a prompt, not 4: with 4 the held-out exact match of the default chain
    # ended below 0.5 on one seed of four (docs/performance.md).
    rollout: RolloutSection = attrs.field(factory=lambda: RolloutSection(group_size=8))
    # The embedded student finds the teacher's answers after about 250 steps: 512 by default.
    num_epochs: int = attrs.field(default=8, validator=int_at_least(1))
    evaluation: EvalSection = attrs.field(factory=lambda: EvalSection(eval_every=64))

    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _rl_sections,
    }
    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = RLConfig.TRAJECTORY_FIELDS | {
        "teacher",
        "mode",
    }

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.policy.kl_penalty_coef:
            raise ValidationError(
                "DistillConfig.policy.kl_penalty_coef",
                "distillation's advantages are the KL to the teacher; leave kl_penalty_coef 0",
            )


@attrs.frozen
class DistillResult(RLResult):
    """On-policy distillation's: RL's, the teacher's KL among the metrics."""


@attrs.frozen
class TeacherDataset:
    """Off-policy distillation's: where the teacher's answers went, as a chat dataset."""

    run_id: str
    teacher_dataset: str
    data: DataSplit | None


def build_workflow(config: DistillConfig) -> Workflow:
    if config.mode == DistillMode.OFF_POLICY:
        return Workflow(
            "distill",
            [
                load_tasks,
                check_split,
                start_session,
                render_prompts,
                plan_recipe,
                start_teacher,
                save_run_record,
                write_teacher_dataset,
            ],
            description="The teacher's answers to the prompts as an SFT dataset.",
        )

    # start_teacher after start_reference: its advantages replace the rewards'.
    parts = rl_parts(
        rl_step,
        distill_eval,
        (check_rewards, start_reference, plan_rollouts, start_teacher),
        before=(answers_stage("answers_before", writes="answers_before"),),
        before_checkpoint=settle_sampling,
        after=(answers_stage("answers_after", writes="answers_after"),),
    )
    return Workflow("distill", training_steps(config, parts), description=DESCRIPTION)


def run(
    config: DistillConfig, adapters: Adapters, **options: Any
) -> DistillResult | TeacherDataset:
    """Distil (``galley.core.engine.run.run_workflow``, whose keyword ``options`` it takes):
    on-policy, a trained student; off-policy, the teacher's answers as a dataset."""
    done = run_workflow("distill", build_workflow, config, adapters, **options)
    state = done.state
    if config.mode == DistillMode.OFF_POLICY:
        return TeacherDataset(done.run_id, state["teacher_dataset"], state.get("data_split"))
    return DistillResult(
        **done.trained(),
        answers_before=tuple(state.get("answers_before", ())),
        answers_after=tuple(state.get("answers_after", ())),
    )


def summarize(outcome: DistillResult | TeacherDataset) -> Summary:
    """Off-policy: where the dataset went and how to train on it; on-policy: RL's summary."""
    if isinstance(outcome, TeacherDataset):
        return Summary(
            (
                SummaryTable(
                    f"run {outcome.run_id}",
                    ("teacher dataset", "train with"),
                    ((outcome.teacher_dataset, SFT_ON.format(outcome.teacher_dataset)),),
                ),
            ),
            (),
            (("teacher answers", outcome.teacher_dataset),),
        )
    summary = summarize_rl(outcome)
    trained = [m for m in outcome.metrics if "teacher_kl" in m]
    if not trained or not summary.tables:
        return summary
    first, *others = summary.tables
    row = ("train teacher_kl", number(trained[0]["teacher_kl"]), number(trained[-1]["teacher_kl"]))
    return attrs.evolve(summary, tables=(attrs.evolve(first, rows=(*first.rows, row)), *others))


__all__ = [
    "DistillConfig",
    "DistillMode",
    "DistillResult",
    "TeacherDataset",
    "build_workflow",
    "run",
    "summarize",
]
