"""structlog setup for the CLI: warnings to the console, every event as JSON to a file."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog
from rich.console import Console

from galley.adapters.helpers.redaction import redact, redact_text
from galley.core.errors import ConfigError

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def redact_secrets(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: fields named like secrets (``api_key``, ``hf_token``, ``password``
    ...), values shaped like tokens (``hf_...``, ``sk-...``, AWS key ids, bearer headers) and
    the environment's credentials (``WANDB_API_KEY`` ...) become ``[redacted]``, at any depth.
    Counts such as ``tokens`` are left alone."""
    return {k: redact(v, k) for k, v in event.items()}


class RedactingConsole(Console):
    """The CLI's console: what it prints goes through the same redaction as the event log
    (a token given in a setting, a password in a blob store URL)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(redact_text(o) if isinstance(o, str) else o for o in objects), **kwargs)


class _JsonFileTee:
    """Writes each event (at ``level`` or above) as a JSON line, then passes it on. A log file
    that stops taking writes (a full disk) is given up with one warning: logging never stops
    a run."""

    def __init__(self, stream: TextIO, level: int, path: Path) -> None:
        self.stream, self.level, self.path = stream, level, path
        self.broken = False

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.broken or LEVELS.get(method, logging.INFO) < self.level:
            return event
        try:
            self.stream.write(json.dumps(event, default=str) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as e:
            self.broken = True
            print(
                f"galley: warning: the log file {str(self.path)!r} cannot be written "
                f"({e}); its events are no longer logged",
                file=sys.stderr,
            )
        return event

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the warning was given when a write failed
            self.stream.close()


class _RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Where the libraries' own warnings go (MLflow's, W&B's, urllib3's, ...) while the CLI
    runs: stderr, redacted like galley's events (a library may print a URL with its
    password, or a request with its token)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


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
    processors: list[Any] = [
        redact_secrets,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tee: _JsonFileTee | None = None
    if json_file is not None:
        tee = _JsonFileTee(_open_log(json_file), to_file, json_file)
        processors.append(tee)
    processors += [_console_filter(console), structlog.dev.ConsoleRenderer(colors=False)]
    lowest = min(console, to_file) if json_file is not None else console
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lowest),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    libraries = _RedactingHandler(sys.stderr)
    libraries.setLevel(logging.WARNING)
    libraries.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(libraries)

    def close() -> None:
        root.removeHandler(libraries)
        if tee is not None:
            tee.close()

    return close


def _open_log(path: Path) -> TextIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"--log-file {str(path)!r} is a folder; expected a file") from None
    except OSError as e:
        raise ConfigError(
            f"--log-file {str(path)!r} cannot be opened for writing: {e.strerror or e}"
        ) from None
