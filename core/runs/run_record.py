"""A run's identity: who owns it while it runs, and the settings it trains with.

Every run keeps two files of its own next to its checkpoints (``<output>/<run_id>/``):

- ``run.json``, its record: the workflow, the config it was started with (versioned, so a
  later galley can still read it), every later change a resume made to it, and what the
  experiment trackers gave to find their runs of it again (``trackers``);
- ``run.lock``, held (``BlobStore.lock``) for as long as a process runs it.

``claim_run`` ties them together before any work: a new run refuses an id that is taken, a
resume refuses a run that another process is running, and a resume whose settings would train
other weights than the saved run did is refused, naming every difference, unless the caller
accepts the change (it then goes into the record's history). The claim writes nothing but the
lock: the workflow saves the record (``save_run_record``) once it knows where training starts,
so a resume refused later (a checkpoint past the run's end) leaves the record as it was. In a
run of several processes, process 0 claims the run and the others train under its claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import attrs

from galley.core.configs import flatten_keys
from galley.core.errors import (
    ConfigError,
    GalleyError,
    Hint,
    LockedError,
    NotFoundError,
    Remedy,
    ValidationError,
)
from galley.core.retry import NO_RETRY, RetryPolicy, call_with_retry
from galley.core.runs.layout import RunPaths
from galley.core.serialization import from_data, from_json, to_data

if TYPE_CHECKING:
    from galley.core.adapter_set import Adapters
    from galley.ports.metrics import MetricsReader

T = TypeVar("T")


class RunExistsError(ConfigError):
    """A new run was given the id of a run that already exists."""


class RunInUseError(GalleyError):
    """Another live process holds the run's lock."""


class SettingsChangedError(ConfigError):
    """A resume's settings would change the run's training; ``changes`` lists them."""

    def __init__(self, message: str, changes: Mapping[str, FieldChange]) -> None:
        super().__init__(message)
        self.changes = changes


class RunSettings(Protocol):
    """What ``claim_run`` needs of a workflow's config class (attrs, one field per setting).

    ``CONFIG_VERSION`` is the shape of the config; ``CONFIG_UPGRADES[v]`` turns a saved config
    of version ``v`` into one of version ``v + 1``, so records of older shapes stay readable.
    ``trajectory_fields()`` names the fields whose change would train other weights."""

    CONFIG_VERSION: ClassVar[int]
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]]

    @property
    def output(self) -> str: ...

    @property
    def run_id(self) -> str | None: ...

    @property
    def resume(self) -> bool: ...

    def trajectory_fields(self) -> frozenset[str]: ...


@attrs.frozen
class FieldChange:
    saved: Any
    given: Any


@attrs.frozen
class ConfigChange:
    """A resume that continued with settings other than the saved ones; ``accepted`` names
    the changed fields that alter the training trajectory (accepted explicitly)."""

    time: float
    changes: Mapping[str, FieldChange]
    accepted: tuple[str, ...] = ()


@attrs.frozen
class RunRecord:
    workflow: str
    run_id: str
    config_version: int
    config: Mapping[str, Any]
    created: float
    history: tuple[ConfigChange, ...] = ()
    # What experiment trackers gave when the run started (their run ids, ...), for a resume.
    trackers: Mapping[str, str] = attrs.field(factory=dict)


def read_run_record(adapters: Adapters, output: str, run_id: str) -> RunRecord | None:
    """The run's record, or None when the run has none (it never started)."""
    key = RunPaths(output, run_id).record
    if not adapters.blobs.exists(key):
        return None
    try:
        return from_json(RunRecord, adapters.blobs.read(key).decode())
    except (GalleyError, UnicodeDecodeError) as e:
        raise ConfigError(f"run record {key!r} is unreadable: {e}") from None


def _nothing_to_resume(output: str, run_id: str) -> NotFoundError:
    return NotFoundError(
        f"run {run_id!r} has nothing to resume: no {RunPaths(output, run_id).record!r} (it never "
        "started here: another output folder or blob store? or an earlier galley without run "
        "records started it)"
    )


def resume_settings(
    adapters: Adapters, output: str, run_id: str, config_type: type[Any], workflow: str
) -> dict[str, Any]:
    """The settings saved with run ``run_id``, in the current config shape: what a resume
    continues with when it is given none. Refused, naming the run's own workflow, when it
    belongs to another than ``workflow`` (its settings would not fit this one's)."""
    record = read_run_record(adapters, output, run_id)
    if record is None:
        raise _nothing_to_resume(output, run_id)
    check_workflow(record, workflow)
    return saved_settings(record, config_type)


def check_workflow(record: RunRecord, workflow: str) -> None:
    """Refuse to resume a run as another workflow's, naming its own (its settings would not
    fit the other's, and its checkpoints were trained for another objective)."""
    if record.workflow != workflow:
        raise ConfigError(
            f"run {record.run_id!r} belongs to the {record.workflow} workflow, not to "
            f"{workflow}: resume it as a {record.workflow} run"
        ).with_hints(Hint(Remedy.RESUME, record.run_id, record.workflow))


def saved_settings(record: RunRecord, config_type: type[Any]) -> dict[str, Any]:
    """The record's config as a mapping of the current config shape (upgraded if older)."""
    version, current = record.config_version, config_type.CONFIG_VERSION
    if version > current:
        raise ConfigError(
            f"run {record.run_id!r} was saved with config version {version}; this galley reads "
            f"versions up to {current}: upgrade galley to resume it"
        )
    data = dict(record.config)
    for v in range(version, current):
        data = config_type.CONFIG_UPGRADES[v](data)
    return data


def saved_config(record: RunRecord, config_type: type[Any]) -> Any:
    """The record's config as a ``config_type`` instance (upgraded if older)."""
    try:
        return from_data(config_type, saved_settings(record, config_type))
    except ValidationError as e:
        raise ConfigError(f"the run record of {record.run_id!r} does not fit: {e}") from None


def _settings(config: Any) -> dict[str, Any]:
    """A config as stored: JSON data, without ``resume`` (how it was started, not what)."""
    data: dict[str, Any] = to_data(attrs.evolve(config, resume=False))
    return data


def config_changes(saved: RunSettings, given: RunSettings) -> dict[str, FieldChange]:
    """Each setting that differs, by its dotted name (``optim.learning_rate``)."""
    old, new = flatten_keys(_settings(saved)), flatten_keys(_settings(given))
    return {k: FieldChange(old.get(k), new.get(k)) for k in old | new if old.get(k) != new.get(k)}


def _owner(workflow: str, run_id: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    where = f"pid {os.getpid()} on {socket.gethostname()}"
    return f"galley {workflow} run {run_id!r} ({where}, since {when})"


def _refuse_changes(run_id: str, output: str, changes: Mapping[str, FieldChange]) -> None:
    listed = "; ".join(f"{k}: saved {c.saved!r}, given {c.given!r}" for k, c in changes.items())
    raise SettingsChangedError(
        f"refusing to resume run {run_id!r} with settings that change what it trains: "
        f"{listed}. Resume with the saved settings (give no others), or accept the change "
        f"explicitly (accept_changes=True), which is recorded in "
        f"{RunPaths(output, run_id).record!r}",
        changes,
    ).with_hints(Hint(Remedy.RESUME, run_id), Hint(Remedy.ACCEPT_CHANGES, run_id))


def metrics_reader(adapters: Adapters) -> MetricsReader | None:
    """The metrics adapter, if it can read rows back (a write-only sink cannot)."""
    metrics = adapters.metrics
    return metrics if callable(getattr(metrics, "read", None)) else None  # type: ignore[return-value]


def _check_new(adapters: Adapters, output: str, run_id: str) -> None:
    folder = RunPaths(output, run_id).folder
    taken = set(adapters.blobs.list(folder)) - {RunPaths(output, run_id).lock}
    reader = metrics_reader(adapters)
    if taken or (reader is not None and reader.read(run_id)):
        raise RunExistsError(
            f"run {run_id!r} already exists ({folder!r} holds its files or metrics); continue "
            "it (resume=True), or choose another run_id"
        ).with_hints(Hint(Remedy.RESUME, run_id))


def _resumed_record(
    record: RunRecord | None,
    workflow: str,
    config: RunSettings,
    accept_changes: bool,
    log: Any,
) -> RunRecord:
    output, run_id = config.output, str(config.run_id)
    if record is None:
        raise _nothing_to_resume(output, run_id)
    if record.run_id != run_id:
        raise ConfigError(
            f"{RunPaths(output, run_id).record!r} is the record of run {record.run_id!r}, not of "
            f"{run_id!r} (copied from another run?); refusing to resume with it"
        )
    check_workflow(record, workflow)
    saved: RunSettings = saved_config(record, type(config))
    changes = config_changes(saved, config)
    trajectory = saved.trajectory_fields() | config.trajectory_fields()
    accepted = tuple(k for k in changes if k in trajectory)
    if accepted and not accept_changes:
        _refuse_changes(run_id, output, {k: changes[k] for k in accepted})
    history = record.history
    if changes:
        log.warning(
            "run.settings_changed",
            changes={k: [c.saved, c.given] for k, c in changes.items()},
            accepted=list(accepted),
        )
        history = (*history, ConfigChange(time.time(), changes, accepted))
    # The record is saved in the current config shape (an older one upgraded) from now on.
    return attrs.evolve(
        record,
        config=_settings(config),
        config_version=type(config).CONFIG_VERSION,
        history=history,
    )


@contextlib.contextmanager
def claim_run(
    adapters: Adapters,
    workflow: str,
    config: RunSettings,
    *,
    accept_changes: bool = False,
    retry: RetryPolicy = NO_RETRY,
    log: Any,
) -> Iterator[RunRecord]:
    """Own run ``config.run_id`` for the body of the ``with``: lock it, check that the run
    may start (a new id) or continue (an existing run, with settings that keep its
    trajectory, unless ``accept_changes``), yield the record to save for it, and release the
    lock on the way out, however the body ends. Refuses before anything is written; store
    calls that fail transiently are retried under ``retry``."""
    output, run_id = config.output, str(config.run_id)

    def io(what: str, call: Callable[[], T]) -> T:
        def warn(attempt: int, error: BaseException, delay: float) -> None:
            log.warning("retry", what=what, attempt=attempt, delay_s=delay, error=str(error))

        return call_with_retry(retry, call, warn)

    key = RunPaths(output, run_id).lock
    try:
        held = io("blobs.lock", lambda: adapters.blobs.lock(key, _owner(workflow, run_id)))
    except LockedError as e:
        raise RunInUseError(
            f"run {run_id!r} is in use by {e.holder}; wait for it to end (or stop it), then "
            f"try again ({key!r})"
        ) from None
    try:
        existing = io("run.read", lambda: read_run_record(adapters, output, run_id))
        if config.resume:
            record = _resumed_record(existing, workflow, config, accept_changes, log)
            # The run's metrics are read again at its end: a store that cannot read them is
            # refused now, not after the training.
            reader = metrics_reader(adapters)
            if reader is not None:
                io("metrics.read", lambda: reader.read(run_id))
        else:
            io("run.check_new", lambda: _check_new(adapters, output, run_id))
            record = RunRecord(
                workflow, run_id, type(config).CONFIG_VERSION, _settings(config), time.time()
            )
        log.info("run.claimed", resume=config.resume, lock=key)
        yield record
    finally:
        try:
            held.release()
        except Exception as error:  # never hide how the run ended; a stale lock is taken over
            log.warning("run.unlock_failed", lock=key, error=str(error))


def write_run_record(adapters: Adapters, output: str, record: RunRecord) -> None:
    data = json.dumps(to_data(record), indent=2, sort_keys=True).encode()
    adapters.blobs.write(RunPaths(output, record.run_id).record, data)  # atomic


def plain_saved_settings(record: RunRecord) -> dict[str, Any]:
    """A run's saved settings by plain name, whether its config kept them in sections or not."""
    return {k.rpartition(".")[2]: v for k, v in flatten_keys(record.config).items()}
