from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback, started and stopped by the test."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto server did not start")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
