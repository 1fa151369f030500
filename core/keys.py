"""BlobStore keys: '/'-separated relative paths that can never escape the store's root."""

from __future__ import annotations

import unicodedata

from galley.core.errors import ValidationError


def has_scheme(reference: str) -> bool:
    """A URL-like ``scheme://...``: what a service keeps (``tinker://``), never a blob key."""
    return "://" in reference


def check_key(key: str, field: str = "key") -> str:
    """Return ``key`` if safe, else raise naming it: no absolute paths, '..', empty segments."""
    if not isinstance(key, str) or not key:
        raise ValidationError(field, f"expected a non-empty string key, got {key!r}")
    problem = None
    if key.startswith("/") or "\\" in key or "\0" in key or (len(key) > 1 and key[1] == ":"):
        problem = "is absolute or has a backslash/NUL"
    elif has_scheme(key):
        problem = "is a URL; keys are relative to the store's root"
    elif any(part in {"", ".", ".."} for part in key.split("/")):
        problem = "has an empty, '.' or '..' segment"
    if problem:
        raise ValidationError(
            field, f"key {key!r} {problem}; expected a relative path like 'runs/x/y.json'"
        )
    return key


def join_key(*parts: str) -> str:
    return check_key("/".join(p.strip("/") for p in parts if p))


def check_prefix(prefix: str, field: str = "prefix") -> str:
    """Like :func:`check_key`, but the empty prefix (the whole store) is allowed."""
    return prefix if prefix == "" else check_key(prefix.rstrip("/"), field)


# A name is one path segment: file systems allow 255 bytes, and a name is often one part of a
# longer file name (a run id in a tracker's folder name).
MAX_NAME_LENGTH = 128


def check_name(name: str, field: str = "name") -> str:
    """A name used as one path segment (a checkpoint, a run id): no separators, no '..'."""
    if not isinstance(name, str) or not name:
        raise ValidationError(field, f"expected a non-empty string, got {name!r}")
    if name in {".", ".."} or any(c in name for c in "/\\\0"):
        raise ValidationError(field, f"{name!r} is not a plain name (no '/', '\\', '..' or NUL)")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(
            field, f"{len(name)} characters is too long for a name (at most {MAX_NAME_LENGTH})"
        )
    if any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in name):
        raise ValidationError(
            field, f"{name!r} holds a control character (a name is shown and used as a path)"
        )
    return name
