"""Who may call ``galley serve``: API keys, each naming the tenant that owns what it makes.

The ``tinker`` SDK sends only keys that start with ``tml-``, so configured keys must too. With
no key configured the server is open to any ``tml-`` key, as one tenant, and binds loopback
only (the CLI refuses another host)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

import attrs

from galley.core.errors import ConfigError
from galley.core.keys import check_name

KEY_PREFIX = "tml-"
OPEN_TENANT = "local"  # the tenant of every key when none is configured
DEFAULT_TENANT = "default"  # the tenant of the one key given with --api-key
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _digest(key: str) -> str:
    # Keys are kept by digest: a dump of the server's memory or a log line never holds one.
    return hashlib.sha256(key.encode()).hexdigest()


@attrs.frozen
class KeyRing:
    """Tenants by key digest; empty: open (any ``tml-`` key is ``OPEN_TENANT``)."""

    tenants: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def open(self) -> bool:
        return not self.tenants

    def tenant(self, key: str | None) -> str | None:
        """The tenant ``key`` belongs to; None: refuse the request (401)."""
        if not key or not key.startswith(KEY_PREFIX):
            return None
        if self.open:
            return OPEN_TENANT
        return self.tenants.get(_digest(key))

    @classmethod
    def of(cls, keys: Mapping[str, str], source: str) -> KeyRing:
        tenants = {}
        for key, tenant in keys.items():
            if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or key == KEY_PREFIX:
                shown = key[:8] + "..." if isinstance(key, str) else repr(key)
                raise ConfigError(
                    f"{source}: API key {shown} must start with {KEY_PREFIX!r} "
                    "(the tinker SDK sends no other)"
                )
            if not isinstance(tenant, str):
                raise ConfigError(f"{source}: the tenant of a key must be a string")
            try:
                tenants[_digest(key)] = check_name(tenant, "tenant")
            except ValueError as e:
                raise ConfigError(f"{source}: {e}") from None
        return cls(tenants)


def read_keys_file(path: Path) -> Mapping[str, str]:
    """A JSON object or TOML table mapping each key to its tenant (``"tml-..." = "alice"``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"keys file {str(path)!r} can't be read: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"keys file {str(path)!r} is not valid: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"keys file {str(path)!r}: expected a non-empty key -> tenant table")
    return data


def key_ring(api_key: str | None = None, keys_file: Path | None = None) -> KeyRing:
    """The keys from ``--api-key`` (or ``GALLEY_API_KEY``) and a keys file, merged."""
    keys: dict[str, str] = {}
    if keys_file is not None:
        keys.update(read_keys_file(keys_file))
    if api_key:
        keys[api_key] = DEFAULT_TENANT
    return KeyRing.of(keys, str(keys_file) if keys_file else "--api-key")
