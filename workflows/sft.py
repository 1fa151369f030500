"""Supervised fine-tuning: the workflow, its config, and ``run``.

load_dataset -> check_split -> start_session -> check_sampling -> render_dataset -> plan_training
-> resume_from_checkpoint -> save_run_record -> evaluate_base
train loop: forward_backward -> optim_step -> collect_results [-> evaluate] [-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler -> sample_answers
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from galley.core.adapter_set import Adapters
from galley.core.checks import (
    int_at_least,
)
from galley.core.configs import TrainingConfig, dotted, nest, plain_settings
from galley.core.domain.types import CheckpointRef
from galley.core.engine import Observer, RetryPolicy, Workflow
from galley.core.engine.run import run_workflow
from galley.core.runs.records import CheckpointRecord, DataSplit
from galley.core.runs.run_record import resume_settings
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
    ModelSection,
    OptimSection,
    RenderSection,
    SamplingSection,
)
from galley.core.serialization import from_data
from galley.core.stages import (
    SampleComparison,
    check_sampling,
    forward_backward,
    load_dataset,
    render_dataset,
    sample_answers,
)
from galley.workflows.skeleton import TrainingParts, training_steps

# What `galley workflows` says of it, and its Workflow.
DESCRIPTION = "Supervised fine-tuning on chat data (LoRA or full), with held-out eval."


def _no_init_from(v2: dict[str, Any]) -> dict[str, Any]:
    """Version 2 had no ``init_from``: every run started from its base model."""
    return {**v2, "init_from": None}


def _truncation_from_truncate(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had ``truncate: bool``: true cut a long row's end, false refused it."""
    v2 = {k: v for k, v in v1.items() if k != "truncate"}
    v2["truncation"] = "keep_start" if v1.get("truncate", True) else "error"
    return v2


def _sections_from_flat(v3: dict[str, Any]) -> dict[str, Any]:
    """Version 3 was flat (``learning_rate``); version 4 keeps settings in their sections
    (``optim.learning_rate``) and adds AdamW's betas and epsilon (defaults as before)."""
    return nest(SFTConfig, v3)


@attrs.frozen(init=False)
class SFTConfig(TrainingConfig):
    """Everything an SFT run needs besides its adapters; every setting has a default. Made
    of shared sections (``model``, ``data``, ``render``, ``optim``, ``checkpoints``, ``evaluation``,
    ``sampling``) and its own fields; any setting may be given by its plain name:
    ``SFTConfig(learning_rate=1e-3, max_steps=50)``."""

    model: ModelSection = attrs.field(factory=ModelSection)
    data: DataSection = attrs.field(factory=DataSection)
    render: RenderSection = attrs.field(factory=RenderSection)
    optim: OptimSection = attrs.field(factory=OptimSection)
    checkpoints: CheckpointSection = attrs.field(factory=CheckpointSection)
    evaluation: EvalSection = attrs.field(factory=EvalSection)
    sampling: SamplingSection = attrs.field(factory=SamplingSection)
    # Passes over the training rows, when max_steps is unset.
    num_epochs: int = attrs.field(default=4, validator=int_at_least(1))
    # Steps submitted before the oldest one's result is read (pipelining).
    submit_ahead: int = attrs.field(default=2, validator=int_at_least(0))

    # The shape of this class as saved in run records; bump it, and add an upgrade from the
    # old shape (saved mapping -> new mapping), when a field is renamed or its meaning changes.
    CONFIG_VERSION: ClassVar[int] = 4
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _truncation_from_truncate,
        2: _no_init_from,
        3: _sections_from_flat,
    }

    # How a resume treats each setting, by dotted name (a test checks every setting is in
    # exactly one set). Changing one of these would train other weights than the saved run
    # did: refused unless accepted explicitly.
    # Every model, data (a dataset without its eval_split holds out train rows instead),
    # rendering and optimizer setting, the batch and the seed.
    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = TrainingConfig.TRAJECTORY_FIELDS | dotted(
        model=ModelSection, data=DataSection, render=RenderSection, optim=OptimSection
    )
    # max_steps and num_epochs (SCHEDULE_LENGTH_FIELDS) are the LR schedule's length: part of
    # the trajectory unless the schedule is constant (then a run may be extended freely).
    # Where and how often to evaluate, checkpoint, sample and report, and who the run is.
    FREE_FIELDS: ClassVar[frozenset[str]] = (
        TrainingConfig.FREE_FIELDS
        | dotted(checkpoints=CheckpointSection, evaluation=EvalSection, sampling=SamplingSection)
        | {"submit_ahead"}
    )


@attrs.frozen
class RunResult:
    run_id: str
    steps: int
    metrics: list[dict[str, float]]  # one per step: step, loss, lr, grad_norm, tokens, ...
    eval: list[dict[str, float]]  # eval rows: step, eval/nll, eval/exact_match, ...
    checkpoints: tuple[CheckpointRecord, ...]
    sampler: CheckpointRef | None
    data: DataSplit | None
    samples: tuple[SampleComparison, ...]
    # Rows left out because no truncation fits them: {"train": n, "eval": m}
    skipped_examples: Mapping[str, int] = attrs.field(factory=dict)


def build_workflow(config: SFTConfig) -> Workflow:
    parts = TrainingParts(
        load=load_dataset,
        render=(check_sampling, render_dataset),
        step=forward_backward,
        after=(sample_answers,),
    )
    return Workflow("sft", training_steps(config, parts), description=DESCRIPTION)


def run(
    config: SFTConfig,
    adapters: Adapters,
    *,
    observers: Sequence[Observer] = (),
    retry: RetryPolicy | None = None,
    accept_changes: bool = False,
) -> RunResult:
    """Run SFT (``galley.core.engine.run.run_workflow``: the run is claimed before anything
    is written, a resume continues from the newest good checkpoint with its saved settings
    unless ``accept_changes``). Raises ``DataFlowError`` before doing anything if the
    workflow is miswired and ``WorkflowError`` (with the state so far) if a stage fails."""
    done = run_workflow(
        "sft",
        build_workflow,
        config,
        adapters,
        observers=observers,
        retry=retry,
        accept_changes=accept_changes,
    )
    state = done.state
    return RunResult(
        **done.trained(),
        samples=tuple(state.get("samples", ())),
        skipped_examples=dict(state.get("skipped_examples", {})),
    )


SHOWN_SAMPLES = 4


def summarize(result: RunResult) -> Summary:
    """Loss, held-out NLL and exact match before and after; a few answers, base vs tuned;
    the steps trained and where the checkpoints and the export went."""
    first_eval, last_eval = (result.eval[0], result.eval[-1]) if result.eval else ({}, {})
    rows: list[tuple[str, ...]] = []
    losses = [m["loss"] for m in result.metrics if "loss" in m]  # skipped steps have none
    if losses:
        rows.append(("train loss", number(losses[0]), number(losses[-1])))
    skipped = sum(1 for m in result.metrics if m.get("skipped"))
    if skipped:
        rows.append(("skipped steps", "", str(skipped)))
    for split, count in result.skipped_examples.items():
        if count:
            rows.append((f"{split} rows too long (skipped)", "", str(count)))
    rows.append(
        ("held-out NLL", number(first_eval.get("eval/nll")), number(last_eval.get("eval/nll")))
    )
    if "eval/exact_match" in last_eval:
        rows.append(
            (
                "exact match",
                number(last_eval["eval/exact_match_base"]),
                number(last_eval["eval/exact_match"]),
            )
        )
    if not result.samples:
        return training_summary(result, rows)
    answers = answers_table(
        "held-out prompts: base vs fine-tuned",
        ("prompt", "expected", "base", "fine-tuned"),
        [(s.prompt, s.reference, s.base, s.tuned) for s in result.samples[:SHOWN_SAMPLES]],
    )
    return training_summary(result, rows, answers)


def resume_config(
    adapters: Adapters, run_id: str, *, output: str = "runs", **changes: Any
) -> SFTConfig:
    """The saved config of run ``run_id`` (under ``output``), set to resume, with ``changes``:
    ``run(resume_config(adapters, "my-run"), adapters)`` continues it as it was started."""
    saved = resume_settings(adapters, output, run_id, SFTConfig, "sft")
    return SFTConfig(**{**plain_settings(from_data(SFTConfig, saved)), "resume": True, **changes})
