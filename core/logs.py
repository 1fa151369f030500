"""galley's events are structlog events: one per meaningful thing, for a log file or a
tracker. A program that has not configured structlog would print every one of them (about
130 for a short run), drowning its own output, so until it configures structlog the events
below warnings are dropped. ``structlog.reset_defaults()`` shows them all again, and any
``structlog.configure(...)`` of the program's own takes over (the CLI's verbose and log-file
options do)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
}


def drop_below_warning(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _LEVELS.get(method, logging.WARNING) < logging.WARNING:
        raise structlog.DropEvent
    return event


def quiet_unless_configured() -> None:
    """Drop events below warnings while structlog is as it came (see the module docstring)."""
    if not structlog.is_configured():
        defaults = structlog.get_config()["processors"]
        structlog.configure(processors=[drop_below_warning, *defaults])
