"""Settings from outside galley into config classes: TOML tables, ``--set`` flags, adapter
options and mappings from Python all take this one path.

Values are read strictly (galley's cattrs converter): ``truncate = "false"`` is refused, not
read as true; ``max_steps = 5.9`` or ``true`` is refused, not read as 5 or 1. Errors name the
source and key, and an unknown key is refused listing the valid ones."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import cattrs

from galley.core.configs import SectionedConfig, default_section, leaf_fields, nest, section_types
from galley.core.errors import ConfigError, GalleyError
from galley.core.serialization import converter, describe_error

T = TypeVar("T")


def settings_from_mapping(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """``cls(**data)``, every value checked for its field's type; unknown keys and invalid
    values are ConfigErrors naming ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
    if issubclass(cls, SectionedConfig):  # plain or dotted names -> one table per section
        try:
            data = nest(cls, data, source)
        except GalleyError as e:
            raise ConfigError(f"{source}: {e}") from None
        _refuse_unknown(data, cls, source)
        data = _over_section_defaults(cls, data)
    valid = [f.name for f in attrs.fields(cast(Any, cls))]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}"
        )
    try:
        return converter.structure(dict(data), cls)
    except cattrs.BaseValidationError as e:
        raise ConfigError(f"{source}: {describe_error(e, cls.__name__)}") from None
    except GalleyError as e:
        raise ConfigError(f"{source}: {e}") from None


def _over_section_defaults(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Each section table given over the config's own default for that section, so setting
    one of a section's settings changes that setting alone."""
    merged = dict(data)
    for section in section_types(cls):
        table = merged.get(section)
        if isinstance(table, Mapping):
            merged[section] = {**converter.unstructure(default_section(cls, section)), **table}
    return merged


def _refuse_unknown(data: Mapping[str, Any], cls: type[Any], source: str) -> None:
    """A sectioned config's unknown settings, named with every valid one."""
    sections = section_types(cls)
    names = [name for name, _ in leaf_fields(cls)]
    unknown = [k for k in data if k not in sections and k not in names]
    for section, kind in sections.items():
        table = data.get(section, {})
        if isinstance(table, Mapping):
            fields = {f.name for f in attrs.fields(kind)}
            unknown += [f"{section}.{k}" for k in table if k not in fields]
    if unknown:
        plain = [name.rpartition(".")[2] for name in names]
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; valid keys: "
            f"{', '.join(plain)} (a section's also as section.key: "
            f"{', '.join(sorted(sections))})"
        )


def check_can_write(path: Path, what: str) -> None:
    """Refuse, before any work, a file the user named for output that cannot be written:
    a folder, or in a folder that is not writable (or that cannot be made). Makes nothing."""
    where = f"{what} {str(path)!r}"
    if path.is_dir():
        raise ConfigError(f"{where} is a folder; expected a file")
    try:
        if path.exists():
            path.open("a").close()  # opened to append, closed: unchanged
            return
        folder = path.absolute().parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(f"{where} cannot be written: {str(folder)!r} is a file")
        with tempfile.TemporaryFile(dir=folder):  # gone when closed
            pass
    except OSError as e:
        raise ConfigError(f"{where} cannot be written: {e.strerror or e}") from None


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file the user named (``what``: how they named it), or a ConfigError saying
    why it cannot be read: missing, a folder, not UTF-8, not readable."""
    where = f"{what} {str(path)!r}"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a folder; expected a file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start + 1})") from None
    except OSError as e:
        raise ConfigError(f"{where} cannot be read: {e.strerror or e}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a TOML literal (``10``, ``1e-4``, ``true``,
    ``"x"``, ``[1, 2]``), falling back to the plain string."""
    import tomllib

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value
