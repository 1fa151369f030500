from __future__ import annotations

import logging

import pytest
import structlog

from galley.adapters.noop import noop_adapters
from galley.core import Adapters


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Tests assert on events with structlog.testing.capture_logs; otherwise drop them."""

    def drop(logger: object, method: str, event: object) -> object:
        raise structlog.DropEvent

    structlog.configure(
        processors=[drop], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )


@pytest.fixture
def adapters() -> Adapters:
    return noop_adapters()
