"""Configs made of sections: a workflow's config is a :class:`SectionedConfig`, the sections
it needs plus fields of its own. Each setting has a dotted name (``optim.learning_rate``)
and, since setting names are unique across a config's sections, its plain name
(``learning_rate``) works too: ``SFTConfig(learning_rate=1e-3)``, a setting
``learning_rate = 1e-3`` and ``optim.learning_rate = 1e-3`` mean the same.

A run's state holds each section whole, under its name, and each of the config's own
fields under its name (:func:`stage_inputs`): a stage takes the sections it uses
(``optim: OptimSection``), so following a setting to the code that reads it is one
find-usages away. The sections themselves are in ``galley.core.sections``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, ClassVar, cast

import attrs

from galley.core.checks import at_least, boolean, choice, int_at_least, output_folder, safe_name
from galley.core.domain.schedules import ScheduleKind
from galley.core.errors import ValidationError


class Section:
    """Marks an attrs class as a config section."""


def dotted(**sections: type[Any]) -> frozenset[str]:
    """Every setting of the given sections by dotted name, as a config classifies them for
    resume: ``dotted(optim=OptimSection)`` is ``{"optim.learning_rate", ...}``."""
    return frozenset(
        f"{name}.{f.name}" for name, kind in sections.items() for f in attrs.fields(kind)
    )


def is_section_type(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Section)


class SectionedConfig:
    """A config of sections and fields of its own (an attrs class with ``init=False`` that
    subclasses this). Made from section objects, plain setting names, or both: plain names
    override the section given."""

    def __init__(self, **settings: Any) -> None:
        cls = type(self)
        sections = section_types(cls)
        owners = plain_owners(cls)
        given: dict[str, Any] = {}
        plain: dict[str, dict[str, Any]] = {}
        for name, value in settings.items():
            if name in sections or name in _own_fields(cls):
                given[name] = value
            elif name in owners:
                plain.setdefault(owners[name], {})[name] = value
            else:
                raise TypeError(f"{cls.__name__}() got an unexpected setting {name!r}")
        for section, values in plain.items():
            # On the section given, else on this config's own default (DPO's learning rate,
            # RL's evaluation), never on the section class's generic one.
            base = given[section] if section in given else default_section(cls, section)
            given[section] = attrs.evolve(base, **values)
        self.__attrs_init__(**given)

    def __getattr__(self, name: str) -> Any:
        owner = plain_owners(type(self)).get(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, owner), name)


class OnNonfinite(StrEnum):
    """What a run does with a NaN or Inf loss or gradient."""

    STOP = "stop"  # stop the run, naming the step and the batch
    SKIP = "skip"  # skip the step's update


@attrs.frozen(init=False)
class RunConfig(SectionedConfig):
    """The settings every run has, declared and validated once: who it is, where its files
    go, how it is seeded, how long a call may take and how its session cuts requests. A
    subclass adds its sections and fields; ``TRAJECTORY_FIELDS`` are those a resume may not
    change (none, for a run that does not train), ``FREE_FIELDS`` those it may."""

    # Seeds the data order, the held-out split, LoRA's init and sampling.
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    # The blob-store folder runs go in: <output>/<run_id>/.
    output: str = attrs.field(default="runs", validator=output_folder)
    # The run's name (a folder under output); unset: the workflow, date and time.
    run_id: str | None = attrs.field(default=None, validator=attrs.validators.optional(safe_name))
    # Continue run `run_id` from its newest checkpoint that verifies, its settings checked
    # against the saved ones (see TRAJECTORY_FIELDS); an evaluation has nothing to resume and
    # runs again.
    resume: bool = attrs.field(default=False, validator=boolean)
    # Seconds a training call may take before the run stops naming it (0 = wait forever);
    # generous when set: a first step compiles for up to a minute.
    call_timeout_s: float = attrs.field(default=0.0, validator=at_least(0.0))
    # Sequences (datums: RL's completions, DPO's two answers a pair) per forward or
    # forward-backward pass of the run's model session: a request (a step's batch) runs as
    # several passes whose gradients add up before the optimizer step, the same update in
    # less memory. 0: a request in one pass. (The jax adapter runs the passes; a service
    # such as tinker plans its own.)
    micro_batch_size: int = attrs.field(default=0, validator=int_at_least(0))

    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = frozenset()
    # Where and who the run is, how long a call may wait, and how a request is cut into
    # passes (the same update): none of them changes what trains.
    FREE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"output", "run_id", "resume", "call_timeout_s", "micro_batch_size"}
    )

    def __attrs_post_init__(self) -> None:
        if self.resume and self.run_id is None:
            raise ValidationError(
                f"{type(self).__name__}.resume", "resuming needs the run_id of the run to continue"
            )

    def trajectory_fields(self) -> frozenset[str]:
        return self.TRAJECTORY_FIELDS


@attrs.frozen(init=False)
class TrainingConfig(RunConfig):
    """A run that trains: it has an ``optim`` section, and steps of ``batch_size`` rows. It
    classifies every setting for a resume (a test checks each is in exactly one class):
    ``TRAJECTORY_FIELDS`` would train other weights; the run's length
    (``SCHEDULE_LENGTH_FIELDS``) too, unless the LR schedule is constant; ``FREE_FIELDS``
    may change freely."""

    # Rows (DPO: pairs; RL: prompts) a step trains on.
    batch_size: int = attrs.field(default=8, validator=int_at_least(1))
    # Steps to train (each on batch_size rows); unset: num_epochs over the data.
    max_steps: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(1))
    )
    # A NaN/Inf loss or gradient: "stop" the run naming step and batch, or "skip" the step.
    on_nonfinite: OnNonfinite = choice(OnNonfinite.STOP)

    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = frozenset({"batch_size", "seed"})
    SCHEDULE_LENGTH_FIELDS: ClassVar[frozenset[str]] = frozenset({"max_steps", "num_epochs"})
    # What happens at a NaN, not what a finite step trains; where and who the run is.
    FREE_FIELDS: ClassVar[frozenset[str]] = RunConfig.FREE_FIELDS | {"on_nonfinite"}

    def trajectory_fields(self) -> frozenset[str]:
        if getattr(self, "optim").lr_schedule == ScheduleKind.CONSTANT:  # noqa: B009
            return self.TRAJECTORY_FIELDS
        return self.TRAJECTORY_FIELDS | self.SCHEDULE_LENGTH_FIELDS


def _fields(cls: type[Any]) -> tuple[attrs.Attribute[Any], ...]:
    attrs.resolve_types(cls)  # annotations are text until resolved (once per class)
    return tuple(attrs.fields(cls))


def section_types(cls: type[Any]) -> dict[str, type[Any]]:
    """The config's sections: field name -> section class."""
    return {f.name: cast(type[Any], f.type) for f in _fields(cls) if is_section_type(f.type)}


def default_section(cls: type[Any], name: str) -> Any:
    """The config's default for its section ``name`` (a workflow's own, e.g. DPO's optim)."""
    default: Any = attrs.fields_dict(cls)[name].default
    return default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]


def _own_fields(cls: type[Any]) -> set[str]:
    return {f.name for f in _fields(cls) if not is_section_type(f.type)}


def plain_owners(cls: type[Any]) -> dict[str, str]:
    """Each section setting's plain name -> the section that holds it."""
    return {
        f.name: section for section, kind in section_types(cls).items() for f in attrs.fields(kind)
    }


def leaf_fields(cls: type[Any]) -> Iterator[tuple[str, attrs.Attribute[Any]]]:
    """Every setting as (dotted name, attribute): ``optim.learning_rate``, ``max_steps``;
    the sections' first, then the config's own (a workflow's, then those every run has)."""
    fields = _fields(cls)
    for f in fields:
        if is_section_type(f.type):
            for inner in attrs.fields(cast(type[Any], f.type)):
                yield f"{f.name}.{inner.name}", inner
    shared = {f.name for f in attrs.fields(RunConfig)} if issubclass(cls, RunConfig) else set()
    own = [f for f in fields if not is_section_type(f.type)]
    for f in sorted(own, key=lambda f: f.name in shared):  # stable: each group keeps its order
        yield f.name, f


def stage_inputs(config: Any) -> dict[str, Any]:
    """A run's initial state: each section whole, and each own field, under its name."""
    return {f.name: getattr(config, f.name) for f in attrs.fields(type(config))}


def plain_settings(config: Any) -> dict[str, Any]:
    """Every setting under its plain name (what a config is rebuilt from)."""
    flat: dict[str, Any] = {}
    for f in attrs.fields(type(config)):
        value = getattr(config, f.name)
        if isinstance(value, Section):
            flat.update(attrs.asdict(value, recurse=False))  # type: ignore[arg-type]
        else:
            flat[f.name] = value
    return flat


def nest(cls: type[Any], data: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """Settings as given (plain or dotted names, section tables) in the config's own shape:
    one table per section. Refuses a setting given twice (plainly and in its section)."""
    sections, owners = section_types(cls), plain_owners(cls)
    nested: dict[str, Any] = {}
    given: list[tuple[str, str, Any]] = []  # (section, key, value), whatever the order
    for name, value in data.items():
        head, dot, tail = name.partition(".")
        if dot and head in sections:
            given.append((head, tail, value))
        elif name in owners:
            given.append((owners[name], name, value))
        elif name in sections and isinstance(value, Mapping):
            given += [(name, key, inner) for key, inner in value.items()]
        else:
            nested[name] = value
    for section, key, value in given:
        table = nested.setdefault(section, {})
        if not isinstance(table, dict):
            raise ValidationError(source or cls.__name__, f"[{section}] must be a table")
        if key in table:
            raise ValidationError(source or cls.__name__, f"{section}.{key} is given twice")
        table[key] = value
    return nested


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, tables merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping with dotted keys: ``{"optim": {"learning_rate": 1}}`` ->
    ``{"optim.learning_rate": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_keys(value, f"{name}."))
        else:
            flat[name] = value
    return flat
