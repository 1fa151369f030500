"""What a workflow says about a finished run, for whoever shows it (the CLI prints it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from galley.core.domain.types import CheckpointRef
from galley.core.runs.records import CheckpointRecord, DataSplit


@attrs.frozen
class SummaryTable:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: bool = False  # a rule between rows (for long text cells)


@attrs.frozen
class Summary:
    """Tables, lines of text, and where the run put things: ``blobs`` are (label, blob key)
    pairs, shown as wherever the blob store keeps the key."""

    tables: tuple[SummaryTable, ...] = ()
    notes: tuple[str, ...] = ()
    blobs: tuple[tuple[str, str], ...] = ()
    header: tuple[str, ...] = ()  # lines before the tables: what the run trained on


def data_header(split: DataSplit | None) -> tuple[str, ...]:
    """The summary's first line: how many rows were trained and evaluated on."""
    return () if split is None else (f"data: {split.describe()}",)


def saved_files(
    checkpoints: Sequence[CheckpointRecord], sampler: CheckpointRef | None
) -> tuple[tuple[str, str], ...]:
    """A training run's checkpoints and exported sampler weights, as the summary lists them."""
    files = [(f"checkpoint (step {r.step})", r.state.key) for r in checkpoints]
    if sampler is not None:
        files.append(("exported sampler weights", sampler.key))
    return tuple(files)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class TrainedRun(Protocol):
    """What every training workflow's result says of its run."""

    @property
    def run_id(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def checkpoints(self) -> tuple[CheckpointRecord, ...]: ...
    @property
    def sampler(self) -> CheckpointRef | None: ...
    @property
    def data(self) -> DataSplit | None: ...


def answers_table(
    title: str, columns: tuple[str, ...], answers: Sequence[tuple[str, ...]]
) -> SummaryTable:
    """Answers side by side (before and after, base and tuned), one ruled row each."""
    return SummaryTable(title, columns, tuple(answers), lines=True)


def training_summary(
    result: TrainedRun,
    rows: Sequence[tuple[str, ...]],
    *more: SummaryTable,
) -> Summary:
    """A training run's summary: its metrics before and after (``rows``), any ``more``
    tables, its steps, where its checkpoints and export went, and what it trained on."""
    metrics = SummaryTable(f"run {result.run_id}", ("metric", "before", "after"), tuple(rows))
    return Summary(
        (metrics, *more),
        (f"steps: {result.steps}",),
        saved_files(result.checkpoints, result.sampler),
        data_header(result.data),
    )
