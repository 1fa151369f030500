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


def environment_secrets() -> list[str]:
    """Values of the environment's credential variables, longest first."""
    found = {
        value
        for name, value in os.environ.items()
        if SECRET_ENV.search(name) and len(value) >= MIN_ENV_SECRET
    }
    return sorted(found, key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with token-shaped values, URL passwords and the environment's credentials
    replaced by ``[redacted]``."""
    for secret in environment_secrets():
        text = text.replace(secret, REDACTED)
    return SECRET_VALUE.sub(REDACTED, text)


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
