"""Read a run's TOML config and ``--set`` flags into a workflow config and adapter choices."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.composition import AdapterChoice, parse_adapters_table
from galley.core.adapter_set import PORT_NAMES, Adapters
from galley.core.config import config_from_mapping, parse_assignment
from galley.core.errors import ConfigError
from galley.core.runs import resume_settings
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
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


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
    fields = dict(document.get(workflow, {}))
    adapters = {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in dict(document.get("adapters", {})).items()
    }
    if adapters_kind:
        adapters = {"default": adapters_kind}
    for text in sets:
        key, value = parse_assignment(text)
        path = key.split(".")
        if path[0] != "adapters":
            fields[key] = value
        elif len(path) == 2 and path[1] in {*PORT_NAMES, "default"}:
            adapters[path[1]] = value
        elif len(path) == 3 and path[1] in PORT_NAMES:
            entry = adapters.get(path[1], {})
            entry = {"kind": entry} if isinstance(entry, str) else entry
            adapters[path[1]] = {**entry, path[2]: value}
        else:
            raise ConfigError(
                f"--set {text!r}: expected adapters.PORT=KIND or adapters.PORT.OPTION=VALUE"
            )
    config = config_from_mapping(spec.config_type, fields, f"{source} [{workflow}]")
    return RunConfig(spec, config, parse_adapters_table(adapters, f"{source} [adapters]"), fields)


def resumed_config(run_config: RunConfig, adapters: Adapters, run_id: str) -> Any:
    """The config to resume ``run_id`` with: the settings saved with the run, overridden by
    the ones given explicitly (which the workflow then checks against the saved ones)."""
    spec = run_config.workflow
    saved = resume_settings(adapters, run_config.config.output, run_id, spec.config_type)
    settings = {**saved, **run_config.given}
    return config_from_mapping(spec.config_type, settings, f"run {run_id!r} resumed")
