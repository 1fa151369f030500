"""A model registry: names for checkpoints worth keeping, with where they came from.

An entry names one checkpoint of one run and records its lineage: the workflow, base model,
dataset, a hash of the run's settings, the step and its metrics, the run it started from
(``init_from``), and where the weights are. The registry is one JSON index in the BlobStore,
beside the runs it names (``<output>/registry/models.json``: everything galley writes is under
one folder, so an entry's run is under the output its registry is in), rewritten whole under
a lock, so it works wherever blobs live.
``registry:NAME`` refers to an entry wherever a model or starting point is asked for
(``base_model``, ``init_from``, a teacher, the model ``galley sample`` samples), so names
never collide with run ids, blob keys or Hub ids."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from galley.core.adapter_set import Adapters
from galley.core.checks import non_empty, safe_name
from galley.core.configs import section_types
from galley.core.domain.weights_source import REGISTRY_PREFIX, SourceForm, WeightsSource
from galley.core.errors import ConfigError, GalleyError, LockedError, NotFoundError
from galley.core.keys import join_key
from galley.core.runs.checkpoint_catalog import show_checkpoint
from galley.core.runs.layout import RunPaths
from galley.core.runs.manifest import MANIFEST_NAME, read_manifest
from galley.core.runs.run_record import plain_saved_settings, read_run_record
from galley.core.sections import BaseModelSection, ModelSection
from galley.core.serialization import from_data, to_data


def index_key(output: str) -> str:
    return join_key(output, "registry", "models.json")


def lock_key(output: str) -> str:
    return join_key(output, "registry", "lock")


def _tags(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ModelEntry:
    name: str = attrs.field(validator=safe_name)
    run_id: str = attrs.field(validator=non_empty)
    step: int
    workflow: str
    base_model: str
    dataset: str | None
    config_hash: str  # SHA-256 of the run's settings as saved
    state: str  # the checkpoint's key
    sampler: str | None = None  # its sampler weights' key, when saved
    parent: str | None = None  # the run's init_from
    metrics: Mapping[str, float] = attrs.field(factory=dict)
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tags)
    registered: float = 0.0
    # SHA-256 of the checkpoint's manifest (which holds every file's digest) when registered:
    # a checkpoint replaced since (deleted, the run resumed with other settings) is refused.
    manifest_sha256: str | None = None


def manifest_digest(adapters: Adapters, state_key: str) -> str:
    return hashlib.sha256(adapters.blobs.read(join_key(state_key, MANIFEST_NAME))).hexdigest()


def _read(adapters: Adapters, output: str) -> list[ModelEntry]:
    key = index_key(output)
    if not adapters.blobs.exists(key):
        return []
    rows = json.loads(adapters.blobs.read(key).decode())
    return [from_data(ModelEntry, row) for row in rows]


def _write(adapters: Adapters, entries: Sequence[ModelEntry], output: str) -> None:
    data = json.dumps([to_data(e) for e in entries], indent=2, sort_keys=True).encode()
    adapters.blobs.write(index_key(output), data)  # atomic: readers see the old index or the new


def register(
    adapters: Adapters,
    run_id: str,
    name: str,
    *,
    step: int | None = None,
    tags: Sequence[str] = (),
    output: str = "runs",
) -> ModelEntry:
    """Register run ``run_id``'s checkpoint at ``step`` (the newest without it) as ``name``:
    refused if the name is taken or the checkpoint does not verify."""
    record = read_run_record(adapters, output, run_id)
    if record is None:
        raise NotFoundError(f"run {run_id!r} has no record under {output!r}")
    checkpoint = show_checkpoint(adapters, run_id, step, output)
    if not checkpoint.verified:
        raise ConfigError(
            f"run {run_id!r}'s checkpoint at step {checkpoint.step} does not verify "
            f"({checkpoint.problem}); register another step"
        )
    settings = plain_saved_settings(record)
    canonical = json.dumps(record.config, sort_keys=True, default=str).encode()
    entry = ModelEntry(
        name,
        run_id,
        checkpoint.step,
        record.workflow,
        str(settings.get("base_model", "")),
        settings.get("dataset"),
        hashlib.sha256(canonical).hexdigest(),
        checkpoint.key,
        checkpoint.sampler,
        settings.get("init_from"),
        checkpoint.metrics,
        tuple(tags),
        time.time(),
        manifest_digest(adapters, checkpoint.key),
    )
    try:
        held = adapters.blobs.lock(lock_key(output), f"galley models register {name}")
    except LockedError as e:
        raise ConfigError(f"the registry is being changed by {e.holder}; try again") from None
    try:
        entries = _read(adapters, output)
        if any(e.name == name for e in entries):
            raise ConfigError(f"a model named {name!r} is registered already; pick another name")
        _write(adapters, [*entries, entry], output)
    finally:
        held.release()
    return entry


def list_models(
    adapters: Adapters, tag: str | None = None, output: str = "runs"
) -> list[ModelEntry]:
    """Registered models, oldest first; with ``tag``, those carrying it."""
    return [e for e in _read(adapters, output) if tag is None or tag in e.tags]


def show_model(adapters: Adapters, name: str, output: str = "runs") -> ModelEntry:
    """The entry named ``name``, refused when its checkpoint is gone or no longer verifies."""
    name = name.removeprefix(REGISTRY_PREFIX)
    entries = _read(adapters, output)
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        known = ", ".join(e.name for e in entries) or "none"
        raise NotFoundError(f"no model named {name!r} is registered (registered: {known})")
    try:
        checkpoint = show_checkpoint(adapters, entry.run_id, entry.step, output)
    except NotFoundError as e:
        raise NotFoundError(f"model {name!r}: its checkpoint is gone ({e})") from None
    if not checkpoint.verified:
        raise NotFoundError(
            f"model {name!r}: its checkpoint no longer verifies ({checkpoint.problem})"
        )
    if entry.manifest_sha256 is not None:
        now = manifest_digest(adapters, entry.state)
        if now != entry.manifest_sha256:
            raise ConfigError(
                f"model {name!r}: the checkpoint at {entry.state!r} is not the one registered "
                f"(manifest SHA-256 {now[:12]}..., registered {entry.manifest_sha256[:12]}...): "
                "it was replaced since, e.g. deleted and trained again; register it anew "
                "under another name if it is the model you want"
            )
    return entry


def sampler_of(adapters: Adapters, entry: ModelEntry, output: str = "runs") -> str:
    """The key of sampler weights of exactly the registered step: the ones saved with the
    checkpoint (``checkpoint_sampler``), else the run's final export when it was made at
    that step (a default run's newest checkpoint). Refused, saying why, otherwise."""
    if entry.sampler is not None:
        return entry.sampler
    final = RunPaths(output, entry.run_id).final_sampler
    try:
        manifest = read_manifest(adapters.blobs, join_key(final, MANIFEST_NAME))
    except GalleyError:
        manifest = None
    if manifest is not None and (manifest.run_id, manifest.step) == (entry.run_id, entry.step):
        return final
    exported = f"the run's final export is of step {manifest.step}" if manifest else "none"
    raise ConfigError(
        f"model {entry.name!r} (run {entry.run_id!r}, step {entry.step}) has no sampler weights "
        f"of its step ({exported}): register a step saved with checkpoint_sampler=true, or "
        "the run's last step"
    )


def resolve_start(adapters: Adapters, source: WeightsSource, output: str = "runs") -> WeightsSource:
    """``registry:NAME`` as the key of the checkpoint it names (checked); anything else as is."""
    if source.form is not SourceForm.REGISTERED:
        return source
    return WeightsSource(
        show_model(adapters, source.registered_name, output).state, SourceForm.PATH
    )


def with_registered_base(adapters: Adapters, config: Any) -> Any:
    """A config whose ``base_model`` is ``registry:NAME`` as one on that model's base model,
    starting from its weights (``init_from=registry:NAME``, so the run records where it
    came from). Refused where the workflow cannot start from weights, or already names a
    starting point."""
    models = [n for n, k in section_types(type(config)).items() if issubclass(k, BaseModelSection)]
    if not models:
        return config
    name = models[0]
    model: BaseModelSection = getattr(config, name)
    base = WeightsSource.parse(model.base_model, "base_model")
    if base.form is not SourceForm.REGISTERED:
        return config
    if not isinstance(model, ModelSection):
        raise ConfigError(
            f"base_model {base.text!r}: this workflow does not start from weights; give the "
            "registered model's base model (galley models show NAME)"
        )
    if model.init_from:
        raise ConfigError(
            f"base_model {base.text!r} starts from that model's weights; leave init_from "
            f"({model.init_from.text!r}) out"
        )
    entry = show_model(adapters, base.registered_name, config.output)
    inner = attrs.evolve(model, base_model=entry.base_model, init_from=base)
    return attrs.evolve(config, **{name: inner})


def describe(entry: ModelEntry) -> dict[str, Any]:
    return to_data(entry)  # type: ignore[no-any-return]
