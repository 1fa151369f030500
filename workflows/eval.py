"""Evaluation: how well a model does on a dataset split, as `galley run eval`.

The model is a base model, or the newest good checkpoint of a run (``from_run``). It is
measured on the split's rows by the evaluators SFT uses: held-out NLL and bits per byte
through the training client's ``forward``, and greedy answers scored by ``scorers``. With no
options it evaluates the embedded model on the embedded dataset's test split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from galley.core.adapter_set import Adapters
from galley.core.checks import (
    int_at_least,
    non_empty,
    safe_name,
)
from galley.core.configs import RunConfig, nest
from galley.core.domain.scorers import resolve_scorer, scorer_specs
from galley.core.engine import Observer, RetryPolicy, Workflow
from galley.core.engine.run import run_workflow
from galley.core.runs.records import EVAL
from galley.core.runs.summary import Summary, SummaryTable, answers_table, number
from galley.core.sections import BaseModelSection, DataSection, RenderSection, SamplingSection
from galley.core.stages import (
    ScoredAnswer,
    answer_and_score,
    load_run_weights,
    load_split,
    measure_heldout,
    render_split,
    save_run_record,
    start_session,
)

SHOWN_ANSWERS = 4

# What `galley workflows` says of it, and its Workflow.
DESCRIPTION = (
    "Evaluate a base model or a run's checkpoint on a dataset split: NLL, bits per byte, scored "
    "answers."
)


def _scorer_specs(value: Any) -> tuple[str, ...]:
    return scorer_specs(value, "scorers")


def _scorers(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for spec in value:
        resolve_scorer(spec)  # a scorer that cannot be found is refused before any work


def _model_in_its_section(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept base_model, lora_rank and lora_alpha flat; version 2 in ``model``."""
    return nest(EvalConfig, v1)


@attrs.frozen(init=False)
class EvalConfig(RunConfig):
    """What to evaluate, on what, and how answers are scored; every setting has a default.
    Rows are rendered (``render``) and answers sampled (``sampling``) with the sections SFT
    uses; any setting may be given by its plain name: ``EvalConfig(num_samples=4)``."""

    # The base model, and the LoRA shape of the run's checkpoints (a run trained otherwise is
    # refused, named).
    model: BaseModelSection = attrs.field(factory=BaseModelSection)
    render: RenderSection = attrs.field(factory=RenderSection)
    sampling: SamplingSection = attrs.field(factory=SamplingSection)
    # A run (under `output`) whose newest good checkpoint is evaluated; None: the base model.
    from_run: str | None = attrs.field(default=None, validator=attrs.validators.optional(safe_name))
    # A Hub dataset id, a local file or a save_to_disk folder.
    dataset: str = attrs.field(default=DataSection().dataset, validator=non_empty)
    # The split evaluated.
    split: str = attrs.field(default="test", validator=non_empty)
    max_examples: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = all rows
    # Rows a forward pass measures.
    eval_batch_size: int = attrs.field(default=16, validator=int_at_least(1))
    # exact_match, contains, regex:<pattern>, or module:function (see galley.core.domain.scorers)
    scorers: tuple[str, ...] = attrs.field(
        default=("exact_match",), converter=_scorer_specs, validator=_scorers
    )

    CONFIG_VERSION: ClassVar[int] = 2
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _model_in_its_section,
    }


@attrs.frozen
class EvalResult:
    run_id: str
    model: str  # what was evaluated: the base model, or "<run> at step N"
    metrics: Mapping[str, float]  # eval/nll, eval/bits_per_byte, eval/<scorer>, ...
    answers: tuple[ScoredAnswer, ...]


def build_workflow(config: EvalConfig) -> Workflow:
    return Workflow(
        "eval",
        [
            load_split,
            start_session,
            load_run_weights,
            render_split,
            save_run_record,
            measure_heldout,
            answer_and_score,
        ],
        description=DESCRIPTION,
    )


def run(
    config: EvalConfig,
    adapters: Adapters,
    *,
    observers: Sequence[Observer] = (),
    retry: RetryPolicy | None = None,
    accept_changes: bool = False,
) -> EvalResult:
    done = run_workflow(
        "eval",
        build_workflow,
        config,
        adapters,
        observers=observers,
        retry=retry,
        accept_changes=accept_changes,
    )
    state = done.state
    step = state["evaluated"].step
    model = f"{config.from_run} at step {step}" if config.from_run else config.base_model
    metrics = {k: v for row in done.stream(EVAL) for k, v in row.items() if k != "step"}
    return EvalResult(done.run_id, model, metrics, tuple(state.get("answers", ())))


def summarize(result: EvalResult) -> Summary:
    rows = tuple(
        (name, f"{value:,.0f}" if name.endswith("tokens") else number(value))
        for name, value in result.metrics.items()
    )
    tables = [SummaryTable(f"eval {result.run_id}: {result.model}", ("metric", "value"), rows)]
    if result.answers:
        scorers = list(result.answers[0].scores)
        answers = tuple(
            (a.prompt, a.reference, a.answer, *(number(a.scores[s]) for s in scorers))
            for a in result.answers[:SHOWN_ANSWERS]
        )
        tables.append(answers_table("answers", ("prompt", "expected", "answer", *scorers), answers))
    return Summary(tuple(tables))
