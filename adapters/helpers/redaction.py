"""Secrets out of what galley prints and logs: tokens, URL passwords, and credentials that live
in the environment (``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN``, ``HF_TOKEN`` ...).

Trackers and hubs take their credentials from the environment, so an error message of theirs
may echo one back; every value of an environment variable named like a credential is
redacted wherever it shows up, whatever its shape.
"""

from __future__ import annotations

import os
import re
from typing import Any

SECRET_KEY = re.compile(
    r"(^|_)(api_?key|token|secret|password|passwd|authorization|access_key|credentials?)$", re.I
)
SECRET_VALUE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|Bearer\s+\S+)"
    r"|(?<=://)[^/\s:@]*:[^/\s@]+(?=@)"  # the user:password of a URL
)
SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|ACCESS_KEY)", re.I)
MIN_ENV_SECRET = 8  # shorter values ("1", "true") would redact ordinary text
REDACTED = "[redacted]"


# Secrets this process was given on its command line, redacted wherever they show up later
# whatever their shape (a library may quote a URL's password without its "://").
_GIVEN: set[str] = set()
MIN_GIVEN_SECRET = 4


def remember_secret(value: str) -> None:
    if len(value) >= MIN_GIVEN_SECRET:
        _GIVEN.add(value)


def environment_secrets() -> list[str]:
    """Values of the environment's credential variables and the secrets given on the command
    line, longest first."""
    found = {
        value
        for name, value in os.environ.items()
        if SECRET_ENV.search(name) and len(value) >= MIN_ENV_SECRET
    }
    return sorted(found | _GIVEN, key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with token-shaped values, URL passwords, the environment's credentials and
    the secrets given on the command line replaced by ``[redacted]``."""
    for secret in environment_secrets():
        text = text.replace(secret, REDACTED)
    return SECRET_VALUE.sub(REDACTED, text)


def redact_argument(argument: str) -> str:
    """A command-line argument with its secret redacted: ``KEY=VALUE`` whose key is named like
    a secret (``adapters.training.api_key=...``), or any token-shaped value."""
    key, sep, value = argument.partition("=")
    if sep and SECRET_KEY.search(key.lstrip("-").rpartition(".")[2]):
        remember_secret(value.strip("\"'"))
        return f"{key}={REDACTED}"
    for match in SECRET_VALUE.finditer(argument):
        remember_secret(match.group(0))
        remember_secret(match.group(0).partition(":")[2])  # a URL's password alone
    return redact_text(argument)


def redact_argv(argv: list[str]) -> list[str]:
    """The arguments with every secret redacted, also one given as the value after a flag
    named like a secret (``--api-key VALUE``)."""
    out: list[str] = []
    for i, argument in enumerate(argv):
        flag = argv[i - 1] if i else ""
        secret_flag = flag.startswith("--") and "=" not in flag
        if secret_flag and SECRET_KEY.search(flag.lstrip("-").replace("-", "_")):
            remember_secret(argument)
            out.append(REDACTED)
        else:
            out.append(redact_argument(argument))
    return out


def redact(value: Any, key: str = "") -> Any:
    """``value`` redacted at any depth; a field named like a secret is redacted whole."""
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value
