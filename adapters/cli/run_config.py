"""Read a run's TOML config and ``--set`` flags into a workflow config and adapter choices."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.composition import AdapterChoice, parse_adapters_table
from galley.adapters.fsspec.kinds import galley_home
from galley.adapters.settings import parse_assignment, read_text, settings_from_mapping
from galley.core.adapter_set import PORT_NAMES, Adapters
from galley.core.configs import SectionedConfig, deep_merge, nest
from galley.core.errors import ConfigError, GalleyError
from galley.core.runs.run_record import resume_settings
from galley.workflows import WORKFLOWS, WorkflowSpec


@attrs.frozen
class RunConfig:
    workflow: WorkflowSpec
    config: Any
    adapters: dict[str, AdapterChoice]
    given: dict[str, Any] = attrs.field(factory=dict)  # the workflow settings given explicitly


def workflow_spec(name: str) -> WorkflowSpec:
    if name not in WORKFLOWS:
        raise ConfigError(f"unknown workflow {name!r}; available: {', '.join(WORKFLOWS)}")
    return WORKFLOWS[name]


def read_toml(path: Path) -> dict[str, Any]:
    text = read_text(path, "config file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def _table(document: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        shape = "an array of tables" if isinstance(value, list) else f"{type(value).__name__}"
        raise ConfigError(f"{source}: [{name}] must be a table (`[{name}]`), not {shape}")
    return dict(value)


def load_run_config(
    workflow: str,
    config_file: Path | None = None,
    sets: Sequence[str] = (),
    adapters_kind: str | None = None,
) -> RunConfig:
    """File < ``--adapters`` < ``--set``: later sources override earlier ones.

    ``--set key=value`` sets a workflow field; ``--set adapters.PORT=KIND`` and
    ``--set adapters.PORT.OPTION=VALUE`` set adapters."""
    spec = workflow_spec(workflow)
    document = read_toml(config_file) if config_file else {}
    source = str(config_file) if config_file else "config"
    unknown = sorted(set(document) - {workflow, "adapters"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown table(s) {', '.join(unknown)}; valid: [{workflow}], [adapters]"
        )
    fields = _table(document, workflow, source)
    adapters = {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in _table(document, "adapters", source).items()
    }
    if adapters_kind:
        adapters = {"default": adapters_kind}
    sectioned = issubclass(spec.config_type, SectionedConfig)
    if sectioned:
        fields = _nested(spec.config_type, fields, f"{source} [{workflow}]")
    for text in sets:
        key, value = parse_assignment(text)
        path = key.split(".")
        if path[0] != "adapters":
            # A later source overrides an earlier one, whichever name each gives a setting.
            given = _nested(spec.config_type, {key: value}, f"--set {text!r}")
            fields = deep_merge(fields, given) if sectioned else {**fields, key: value}
        elif len(path) == 2 and path[1] in {*PORT_NAMES, "default"}:
            adapters[path[1]] = value
        elif len(path) == 3 and path[1] in PORT_NAMES:
            entry = adapters.get(path[1], {})
            entry = {"kind": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict):
                raise ConfigError(
                    f"--set {text!r}: [adapters] {path[1]} is {entry!r:.40}, not a kind or a table"
                )
            adapters[path[1]] = {**entry, path[2]: value}
        else:
            raise ConfigError(
                f"--set {text!r}: expected adapters.PORT=KIND or adapters.PORT.OPTION=VALUE"
            )
    try:
        config = settings_from_mapping(spec.config_type, fields, f"{source} [{workflow}]")
    except ConfigError:
        _blame_a_set(spec.config_type, sets)  # a --set refused on its own is the one to name
        raise
    choices = parse_adapters_table(adapters, f"{source} [adapters]")
    return RunConfig(spec, config, metrics_beside_the_run(choices, config.output), fields)


def _blame_a_set(cls: type[Any], sets: Sequence[str]) -> None:
    """Raise the refusal of the first workflow ``--set`` that is refused on its own (over the
    defaults), so an error names the flag and not the file it overrode; return when each
    passes alone (the refusal is of their combination)."""
    for text in sets:
        key, value = parse_assignment(text)
        if key.split(".")[0] != "adapters":
            settings_from_mapping(
                cls, _nested(cls, {key: value}, f"--set {text!r}"), f"--set {text!r}"
            )


def _nested(cls: type[Any], settings: dict[str, Any], source: str) -> dict[str, Any]:
    """A sectioned config's settings as one table per section (plain, dotted or tabled)."""
    if not issubclass(cls, SectionedConfig):
        return settings
    try:
        return nest(cls, settings, source)
    except GalleyError as e:
        raise ConfigError(str(e)) from None


def metrics_beside_the_run(
    choices: dict[str, AdapterChoice], output: str
) -> dict[str, AdapterChoice]:
    """A metrics store or tracker not told where to write goes where the run's other files go
    (``<blob store folder>/<output>``), so ``--set output=...`` moves them all: JSONL, SQLite,
    TensorBoard's event files, W&B's offline runs and MLflow's SQLite store (the last four
    when the blob store is a local folder)."""
    blobs, metrics = choices["blobs"], choices["metrics"]
    on_files = blobs.kind == "fsspec"
    folder = str(blobs.options.get("url", galley_home())).rstrip("/") if on_files else "."
    local = f"{folder}/{output}" if "://" not in folder else None
    local_defaults = {
        "sqlite": ("path", f"{local}/metrics.db"),
        "tensorboard": ("logdir", local),
        "wandb": ("dir", local),
        "mlflow": ("tracking_uri", f"sqlite:///{local}/mlflow.db"),
    }

    def placed(choice: AdapterChoice) -> AdapterChoice:
        options = dict(choice.options)
        if choice.kind == "jsonl" and "url" not in options:
            options["url"] = f"{folder}/{output}"
            if on_files and "storage_options" in blobs.options:
                options.setdefault("storage_options", blobs.options["storage_options"])
        elif choice.kind in local_defaults and local is not None:
            option, value = local_defaults[choice.kind]
            options.setdefault(option, value)
        return attrs.evolve(choice, options=options)

    if metrics.parts:
        placed_metrics = attrs.evolve(metrics, parts=tuple(placed(p) for p in metrics.parts))
    else:
        placed_metrics = placed(metrics)
    return {**choices, "metrics": placed_metrics}


def resumed_config(run_config: RunConfig, adapters: Adapters, run_id: str) -> Any:
    """The config to resume ``run_id`` with: the settings saved with the run, overridden by
    the ones given explicitly (which the workflow then checks against the saved ones)."""
    spec = run_config.workflow
    saved = resume_settings(adapters, run_config.config.output, run_id, spec.config_type, spec.name)
    settings = deep_merge(saved, run_config.given)
    return settings_from_mapping(spec.config_type, settings, f"run {run_id!r} resumed")
