"""galley's exception types.

Every error galley raises on purpose derives from :class:`GalleyError`, so a caller can tell
"galley refused this input" from "something crashed". Messages name the culprit (field, file,
row, stage) and say what was expected.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

import attrs


class Remedy(StrEnum):
    """What a user can do about a refusal, said once for every front end."""

    RESUME = "resume"  # continue run ``run_id`` of ``workflow`` (resume=True)
    ACCEPT_CHANGES = "accept_changes"  # resume with the changed settings, recorded in the run
    SET = "set"  # give ``setting`` a ``value``
    RUN = "run"  # run ``workflow`` first (to make what is missing)
    FORCE = "force"  # do it anyway (force=True)


@attrs.frozen
class Hint:
    """A remedy an error carries as data: the CLI shows it as the flags to pass, Python
    callers read it as the keywords to give. Core never spells a command line."""

    remedy: Remedy
    run_id: str = ""
    workflow: str = ""
    setting: str = ""
    value: str = ""


class GalleyError(Exception):
    """Base class of every error galley raises deliberately. ``hints`` say what may fix it."""

    hints: tuple[Hint, ...] = ()

    def with_hints(self, *hints: Hint) -> Self:
        self.hints = (*self.hints, *hints)
        return self


class ValidationError(GalleyError, ValueError):
    """A value does not satisfy a type's contract; ``field`` names where it was found."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ConfigError(GalleyError, ValueError):
    """A configuration (TOML file, settings flag, adapter options) is invalid."""


class DataError(GalleyError, ValueError):
    """A dataset row is malformed; the message names the source, row and field. ``row`` is
    the 0-based index; the message counts from 1, as editors and spreadsheets do. A problem
    with a whole file has no row."""

    def __init__(self, source: str, row: int | None, field: str, message: str) -> None:
        where = f"{source}, row {row + 1}" if row is not None else source
        super().__init__(f"{where}, field {field!r}: {message}")
        self.source = source
        self.row = row
        self.field = field


class DataFlowError(GalleyError):
    """A workflow's stages read state that nothing provides; raised before anything runs."""


class TransientError(GalleyError):
    """A failure that may succeed when retried (a dropped connection, a busy server).

    Adapters raise it (or a subclass) for faults worth retrying; the runner retries stages that
    raise it, with bounded attempts and backoff. Everything else stops the run.
    """


# Exceptions that code raises on its own mistakes, not on a bad input or a failing service:
# one of these reaching a stage's caller is a bug in galley, an adapter or a user callable.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    NameError,
    LookupError,
    ZeroDivisionError,
    AssertionError,
    RecursionError,
)


def is_internal(error: BaseException | None) -> bool:
    """Whether ``error`` is a crash (a programming error that galley did not raise on purpose)
    rather than a refusal or a failure that galley or a service reports."""
    return isinstance(error, PROGRAMMING_ERRORS) and not isinstance(error, GalleyError)


class WorkflowError(GalleyError):
    """A workflow stopped on an error; ``state`` holds everything committed before it.
    ``internal`` is true when the cause was a crash (see :func:`is_internal`), not a refusal
    or a failure that galley or a service reported."""

    def __init__(
        self, message: str, *, stage: str, step: int | None, state: dict[str, object]
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.step = step
        self.state = state

    @property
    def internal(self) -> bool:
        return is_internal(self.__cause__)


class NotFoundError(GalleyError, KeyError):
    """A named thing (blob, dataset, repo file, checkpoint) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LockedError(GalleyError):
    """A lock is held by someone else; ``holder`` is the text its holder wrote."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key!r} is locked by {holder}")
        self.key = key
        self.holder = holder


class ServiceError(GalleyError):
    """A service galley was working with (a hub, a remote store) failed or refused while a
    command ran: a failure to report (exit 1), not an input refused up front (exit 2)."""


class PortTimeoutError(GalleyError):
    """A port call's future did not resolve within the run's timeout; names the call."""


class NonFiniteError(GalleyError):
    """A loss or gradient norm came back NaN or infinite; names the step and its batch."""

    def __init__(self, step: int, what: str, value: float, examples: tuple[int, ...]) -> None:
        shown = ", ".join(map(str, examples[:16])) + (", ..." if len(examples) > 16 else "")
        super().__init__(
            f"step {step}: {what} is {value} (batch of examples {shown}); stopping before "
            "any checkpoint is written from these weights"
        )
        self.step = step
        self.examples = examples
