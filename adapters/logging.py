"""structlog setup for the CLI: warnings to the console, every event as JSON to a file."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


SECRET_KEY = re.compile(
    r"(^|_)(api_?key|token|secret|password|passwd|authorization|access_key|credentials?)$", re.I
)
SECRET_VALUE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|Bearer\s+\S+)"
)
REDACTED = "[redacted]"


def _redact(value: Any, key: str = "") -> Any:
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: fields named like secrets (``api_key``, ``hf_token``, ``password``
    ...) and values shaped like tokens (``hf_...``, ``sk-...``, AWS key ids, bearer headers)
    become ``[redacted]``, at any depth. Counts such as ``tokens`` are left alone."""
    return {k: _redact(v, k) for k, v in event.items()}


class _JsonFileTee:
    """Writes each event (at ``level`` or above) as a JSON line, then passes it on."""

    def __init__(self, stream: TextIO, level: int) -> None:
        self.stream, self.level = stream, level

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if LEVELS.get(method, logging.INFO) >= self.level:
            self.stream.write(json.dumps(event, default=str) + "\n")
            self.stream.flush()
        return event


def _console_filter(level: int) -> Any:
    def drop_below(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if LEVELS.get(method, logging.INFO) < level:
            raise structlog.DropEvent
        return event

    return drop_below


def configure_logging(
    console_level: str = "warning", json_file: Path | None = None, file_level: str = "info"
) -> Callable[[], None]:
    """Configure structlog; returns a function that closes the JSON file (if any)."""
    console, to_file = LEVELS[console_level], LEVELS[file_level]
    stream: TextIO | None = None
    processors: list[Any] = [
        redact_secrets,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        stream = json_file.open("a", encoding="utf-8")
        processors.append(_JsonFileTee(stream, to_file))
    processors += [_console_filter(console), structlog.dev.ConsoleRenderer(colors=False)]
    lowest = min(console, to_file) if json_file is not None else console
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lowest),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    return stream.close if stream is not None else lambda: None
