"""Config sections that workflows share, and configs made of them.

A section is a frozen attrs class of settings that belong together (the model and its LoRA,
the data and how it is rendered, the optimizer, ...). A workflow's config is a
:class:`SectionedConfig`: the sections it needs plus fields of its own. Each setting has a
dotted name (``optim.learning_rate``) and, since setting names are unique across a config's
sections, its plain name (``learning_rate``) works too: ``SFTConfig(learning_rate=1e-3)``,
``--set learning_rate=1e-3`` and ``--set optim.learning_rate=1e-3`` mean the same.

A run's state holds each section whole, under its name, and each of the config's own
fields under its name: a stage takes the sections it uses (``optim: OptimSection``), so
following a setting to the code that reads it is one find-usages away.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, cast

import attrs

from galley.core.checks import (
    at_least,
    boolean,
    in_range,
    int_at_least,
    non_empty,
    one_of,
)
from galley.core.domain.chat import TrainOn
from galley.core.domain.rendering import RENDERERS, Truncation
from galley.core.domain.schedules import ScheduleKind
from galley.core.errors import ValidationError


class Section:
    """Marks an attrs class as a config section."""


@attrs.frozen
class BaseModelSection(Section):
    """The model a session runs, and its LoRA shape: what an evaluation needs."""

    # A Hub repo id, a model folder, or registry:NAME (a registered model's base and weights).
    base_model: str = attrs.field(default="galley/tiny-lm", validator=non_empty)
    lora_rank: int = attrs.field(default=16, validator=int_at_least(0))  # 0 = full fine-tuning
    # The LoRA update is scaled by lora_alpha / lora_rank.
    lora_alpha: float = attrs.field(default=32.0, validator=in_range(0.0, 1e6, low_open=True))


@attrs.frozen
class ModelSection(BaseModelSection):
    """The model trained, its LoRA, and where its weights start."""

    # Start from other weights than the base model's: a run id (its newest good checkpoint),
    # or the blob key of a state checkpoint or a LoRA adapter export. Weights only.
    init_from: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(non_empty)
    )


@attrs.frozen
class DataSection(Section):
    """What a run trains on, and what it holds out to evaluate on."""

    # A Hub dataset id, a local file (.jsonl, .json, .csv, .parquet) or a save_to_disk folder.
    dataset: str = attrs.field(default="galley/tiny-instruct", validator=non_empty)
    train_split: str = attrs.field(default="train", validator=non_empty)  # the rows trained on
    # When the dataset lacks it, eval_holdout train rows are held out.
    eval_split: str = attrs.field(default="test", validator=non_empty)
    # At most this many, and at most a tenth of the train rows (none below 10 rows).
    eval_holdout: int = attrs.field(default=32, validator=int_at_least(0))


@attrs.frozen
class FormatSection(Section):
    """How rows become tokens: the chat format and how long rows are cut."""

    max_length: int = attrs.field(default=256, validator=int_at_least(2))  # tokens per row
    # A row longer than max_length: "keep_end" drops its oldest prompt (whole leading messages,
    # then tokens), "keep_start" its end, "error" stops the run; one that still cannot fit
    # without losing what it trains on is skipped and counted.
    truncation: str = attrs.field(
        default=Truncation.KEEP_END.value, validator=one_of([t.value for t in Truncation])
    )
    # "role_colon" (User: ... / Assistant: ...) or "chat_template" (the model's own template).
    renderer: str = attrs.field(default="role_colon", validator=one_of(list(RENDERERS)))


@attrs.frozen
class RenderSection(FormatSection):
    """How rows become tokens (``FormatSection``) and which of their tokens are trained on."""

    # Tokens with loss weight: last_assistant_message, all_assistant_messages, all_messages
    # or all_tokens.
    train_on: str = attrs.field(
        default=TrainOn.LAST_ASSISTANT_MESSAGE.value, validator=one_of([t.value for t in TrainOn])
    )


@attrs.frozen
class OptimSection(Section):
    """AdamW and its learning-rate schedule."""

    # Tuned for the embedded model's LoRA; billion-parameter models want about 1e-4 to 5e-4.
    learning_rate: float = attrs.field(default=3e-3, validator=at_least(0.0))
    # After warmup: "linear" or "cosine" decay to min_lr_ratio x learning_rate, or "constant".
    lr_schedule: str = attrs.field(
        default="linear", validator=one_of([k.value for k in ScheduleKind])
    )
    warmup_steps: int = attrs.field(default=0, validator=int_at_least(0))  # linear from 0
    # The schedule's floor, as a share of learning_rate.
    min_lr_ratio: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    weight_decay: float = attrs.field(default=0.0, validator=at_least(0.0))  # AdamW's, decoupled
    # Gradients are scaled to at most this global norm (0 = no clipping).
    grad_clip_norm: float = attrs.field(default=1.0, validator=at_least(0.0))
    # Adam's decay of its gradient mean.
    adam_beta1: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0, high_open=True))
    # Tinker's default; 0.999 is PyTorch's.
    adam_beta2: float = attrs.field(default=0.95, validator=in_range(0.0, 1.0, high_open=True))
    # Added to Adam's denominator (Tinker's default).
    adam_eps: float = attrs.field(default=1e-12, validator=in_range(0.0, 1.0, low_open=True))


@attrs.frozen
class CheckpointSection(Section):
    """When the run saves its state, and which saves it keeps."""

    checkpoint_every: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = final only
    keep_checkpoints: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = keep all
    # Keep the keep_best checkpoints whose step scored best on keep_metric (lowest, or highest
    # with keep_max) as well as the newest keep_checkpoints; 0 = no ranking.
    keep_best: int = attrs.field(default=0, validator=int_at_least(0))
    keep_metric: str = attrs.field(default="eval/nll", validator=non_empty)  # for keep_best
    keep_max: bool = attrs.field(default=False, validator=boolean)  # keep_metric: higher wins
    # Save sampler weights (a LoRA adapter) with every checkpoint, so any step can be sampled.
    checkpoint_sampler: bool = attrs.field(default=False, validator=boolean)


@attrs.frozen
class EvalSection(Section):
    """How often the held-out rows are measured, and in batches of how many."""

    eval_every: int = attrs.field(default=64, validator=int_at_least(0))  # 0 = start and end
    eval_batch_size: int = attrs.field(default=16, validator=int_at_least(1))  # rows a forward


@attrs.frozen
class SamplingSection(Section):
    """The held-out prompts answered before and after training, side by side."""

    num_samples: int = attrs.field(default=16, validator=int_at_least(0))  # prompts answered
    sample_max_tokens: int = attrs.field(default=48, validator=int_at_least(1))  # per answer


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


class TrainingConfig(SectionedConfig):
    """A sectioned config of a run that trains: an ``optim`` section, ``run_id`` and
    ``resume``. It classifies every setting for a resume (a test checks each is in exactly one
    class): ``TRAJECTORY_FIELDS`` would train other weights; the run's length
    (``SCHEDULE_LENGTH_FIELDS``) too, unless the LR schedule is constant; ``FREE_FIELDS`` may
    change freely."""

    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = frozenset()
    SCHEDULE_LENGTH_FIELDS: ClassVar[frozenset[str]] = frozenset({"max_steps", "num_epochs"})
    FREE_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def __attrs_post_init__(self) -> None:
        if getattr(self, "resume", False) and getattr(self, "run_id", None) is None:
            raise ValidationError(
                f"{type(self).__name__}.resume", "resuming needs the run_id of the run to continue"
            )

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
    """Every setting as (dotted name, attribute): ``optim.learning_rate``, ``max_steps``."""
    for f in _fields(cls):
        if is_section_type(f.type):
            for inner in attrs.fields(cast(type[Any], f.type)):
                yield f"{f.name}.{inner.name}", inner
        else:
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
