"""The build-time checks of a workflow's data flow: every key a stage reads has been written
before it, and a key written twice is updated (read, then written) or declared replaced."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from galley.core.engine.stage import Every, Loop, Stage, Step, Workflow
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
    initial state (``provided``: the config) nor an earlier, unconditional stage supplies, or
    that writes a key someone wrote before without reading it or declaring ``replaces``.

    Writes inside a loop are not available after it (the loop may run zero times), nor are
    the writes of an :class:`Every` stage (it may not run)."""
    given = dict.fromkeys(provided, "the config")
    _check(workflow.steps, given, _writers(workflow.steps), workflow.name)


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


def _overwrites(stage: Stage, written: dict[str, str], workflow: str) -> None:
    """Refuse a stage that writes over a key an earlier stage (or the config) wrote without
    reading it or declaring that it replaces it: two writers of one key would make which value
    a later stage sees depend on the order of the stages, silently."""
    replaces: frozenset[str] = getattr(stage, "replaces", frozenset())
    for key in sorted(stage.writes - stage.reads - replaces):
        if key in written:
            raise DataFlowError(
                f"workflow {workflow!r}: stage {stage.name!r} writes {key!r}, which "
                f"{written[key]} already wrote; read it (to update it) or declare "
                f"replaces=({key!r},)"
            )


def _check(
    steps: Sequence[Step], written: dict[str, str], writers: dict[str, str], workflow: str
) -> None:
    """``written``: each key available so far -> who wrote it."""
    for step in steps:
        if isinstance(step, Loop):
            _missing(f"loop {step.name}", (step.start, step.stop), set(written), writers, workflow)
            _check(step.body, {**written, step.counter: f"loop {step.name}"}, writers, workflow)
        elif isinstance(step, Every):
            reads = {*step.stage.reads, step.key}
            _missing(step.name, reads, set(written), writers, workflow)
            _overwrites(step.stage, written, workflow)
        else:
            _missing(step.name, step.reads, set(written), writers, workflow)
            _overwrites(step, written, workflow)
            written.update(dict.fromkeys(step.writes, f"stage {step.name!r}"))
