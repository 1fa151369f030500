"""The build-time check that every key a stage reads has been written before it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from galley.core.engine.stage import Every, Loop, Step, Workflow
from galley.core.errors import DataFlowError


def _writers(steps: Iterable[Step]) -> dict[str, str]:
    """First stage (in order) writing each key."""
    found: dict[str, str] = {}
    for step in steps:
        if isinstance(step, Loop):
            for key, name in _writers(step.body).items():
                found.setdefault(key, name)
            found.setdefault(step.counter, f"loop {step.name}")
        else:
            inner = step.stage if isinstance(step, Every) else step
            for key in inner.writes:
                found.setdefault(key, inner.name)
    return found


def check_data_flow(workflow: Workflow, provided: Iterable[str]) -> None:
    """Raise :class:`DataFlowError` naming the first stage that reads a key which neither the
    initial state (``provided``: the config) nor an earlier, unconditional stage supplies.

    Writes inside a loop are not available after it (the loop may run zero times), nor are
    the writes of an :class:`Every` stage (it may not run)."""
    _check(workflow.steps, set(provided), _writers(workflow.steps), workflow.name)


def _missing(
    who: str, reads: Iterable[str], available: set[str], writers: dict[str, str], workflow: str
) -> None:
    for key in sorted(reads):
        if key not in available:
            later = writers.get(key)
            hint = (
                f"; it is written later by {later!r} (reorder the stages)"
                if later and later != who
                else "; no stage writes it and the config does not provide it"
            )
            raise DataFlowError(
                f"workflow {workflow!r}: stage {who!r} reads {key!r} before it is written{hint}"
            )


def _check(
    steps: Sequence[Step], available: set[str], writers: dict[str, str], workflow: str
) -> None:
    for step in steps:
        if isinstance(step, Loop):
            _missing(f"loop {step.name}", (step.start, step.stop), available, writers, workflow)
            _check(step.body, {*available, step.counter}, writers, workflow)
        elif isinstance(step, Every):
            _missing(step.name, {*step.stage.reads, step.key}, available, writers, workflow)
        else:
            _missing(step.name, step.reads, available, writers, workflow)
            available |= step.writes
