"""Direct preference optimisation: ``galley run dpo``.

load_preferences -> check_split -> start_session -> render_pairs -> plan_training
-> resume_from_checkpoint -> init_weights -> plan_reference -> save_run_record
-> reference_logprobs -> evaluate_base
train loop: preference_step -> optim_step -> collect_results [-> evaluate] [-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler

Pairs in TRL's preference format are rendered as SFT renders rows; the reference scores them
once before training (saved with the run); each step trains TRL's ``sigmoid`` or ``ipo`` loss
through the linearisation, so any TrainingClient runs it. With no options it tunes the
embedded model on the embedded ``galley/tiny-prefs`` pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from galley.core.adapter_set import Adapters
from galley.core.checks import int_at_least
from galley.core.configs import TrainingConfig, dotted, nest
from galley.core.domain.types import CheckpointRef
from galley.core.engine import Workflow
from galley.core.engine.run import run_workflow
from galley.core.runs.records import CheckpointRecord, DataSplit
from galley.core.runs.summary import (
    Summary,
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
    PreferenceSection,
)
from galley.core.stages.dpo import (
    load_preferences,
    plan_reference,
    preference_eval,
    preference_step,
    reference_logprobs,
    render_pairs,
)
from galley.workflows.skeleton import TrainingParts, training_steps

# What the default run reports, in this order: TRL's names.
SHOWN_METRICS = (
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
)

# What `galley workflows` says of it, and its Workflow.
DESCRIPTION = "Direct preference optimisation on chosen/rejected pairs (TRL's sigmoid or IPO loss)."


def _preference_section(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept loss_type, beta, label_smoothing and reference_model flat; version 2
    in ``preference``."""
    return nest(DPOConfig, v1)


@attrs.frozen(init=False)
class DPOConfig(TrainingConfig):
    """Everything a DPO run needs besides its adapters; every setting has a default, and any
    may be given by its plain name: ``DPOConfig(beta=0.2, max_steps=50)``."""

    model: ModelSection = attrs.field(factory=ModelSection)
    data: DataSection = attrs.field(factory=lambda: DataSection(dataset="galley/tiny-prefs"))
    render: FormatSection = attrs.field(factory=FormatSection)
    optim: OptimSection = attrs.field(factory=lambda: OptimSection(learning_rate=2e-3))
    checkpoints: CheckpointSection = attrs.field(factory=CheckpointSection)
    evaluation: EvalSection = attrs.field(factory=lambda: EvalSection(eval_every=16))
    preference: PreferenceSection = attrs.field(factory=PreferenceSection)
    num_epochs: int = attrs.field(default=1, validator=int_at_least(1))  # tiny-prefs: 64 steps
    # Steps submitted before the oldest one's result is read (pipelining).
    submit_ahead: int = attrs.field(default=1, validator=int_at_least(0))

    CONFIG_VERSION: ClassVar[int] = 2
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _preference_section,
    }

    # As SFT's: what a resume may not change without accepting it explicitly.
    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = TrainingConfig.TRAJECTORY_FIELDS | dotted(
        model=ModelSection,
        data=DataSection,
        render=FormatSection,
        optim=OptimSection,
        preference=PreferenceSection,
    )
    FREE_FIELDS: ClassVar[frozenset[str]] = (
        TrainingConfig.FREE_FIELDS
        | dotted(checkpoints=CheckpointSection, evaluation=EvalSection)
        | {"submit_ahead"}
    )


@attrs.frozen
class DPOResult:
    run_id: str
    steps: int
    metrics: list[dict[str, float]]  # one per step: loss, rewards/..., logps/..., lr, ...
    eval: list[dict[str, float]]  # held-out rows: eval/loss, eval/rewards/accuracies, ...
    checkpoints: tuple[CheckpointRecord, ...]
    sampler: CheckpointRef | None
    data: DataSplit | None
    skipped_examples: Mapping[str, int] = attrs.field(factory=dict)


def build_workflow(config: DPOConfig) -> Workflow:
    parts = TrainingParts(
        load=load_preferences,
        render=(render_pairs,),
        step=preference_step,
        measure=preference_eval,
        setup=(plan_reference,),
        recorded=(reference_logprobs,),  # scored once, saved with the run
    )
    return Workflow("dpo", training_steps(config, parts), description=DESCRIPTION)


def run(config: DPOConfig, adapters: Adapters, **options: Any) -> DPOResult:
    """Run DPO (``galley.core.engine.run.run_workflow``, whose keyword ``options`` it takes:
    observers, retry, accept_changes)."""
    done = run_workflow("dpo", build_workflow, config, adapters, **options)
    state = done.state
    return DPOResult(
        **done.trained(),
        skipped_examples=dict(state.get("skipped_examples", {})),
    )


def summarize(outcome: DPOResult) -> Summary:
    """Held-out loss and rewards before and after; the first and last step's training loss;
    where the checkpoints and the export went."""
    first, last = (outcome.eval[0], outcome.eval[-1]) if outcome.eval else ({}, {})
    rows: list[tuple[str, ...]] = [
        (f"held-out {name}", number(first.get(f"eval/{name}")), number(last.get(f"eval/{name}")))
        for name in SHOWN_METRICS
    ]
    losses = [m["loss"] for m in outcome.metrics if "loss" in m]
    if losses:
        rows.append(("train loss", number(losses[0]), number(losses[-1])))
    for split, count in outcome.skipped_examples.items():
        if count:
            rows.append((f"{split} pairs too long (skipped)", "", str(count)))
    return training_summary(outcome, rows)
