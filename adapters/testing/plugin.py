"""galley's pytest plugin: ``galley_`` fixtures for testing workflows on fakes, and failure
reports of the contract suites that name the guarantee broken.

Registered through the ``pytest11`` entry point, so any project with galley installed has it.
Loading it imports no framework (JAX, datasets, fsspec): what a fixture needs is imported
when the fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from galley.adapters.testing.contract import guarantee_of
from galley.core.adapter_set import Adapters


@pytest.fixture
def galley_adapters(galley_blobs: Any) -> Callable[..., Adapters]:
    """Noop adapters of all six ports, any of them replaced: ``galley_adapters()``,
    ``galley_adapters(metrics=my_store)``. Blobs default to ``galley_blobs`` (files under
    the test's temporary folder), so checkpoints are real files a test can look at."""
    from galley.adapters.noop import noop_adapters

    def make(**overrides: Any) -> Adapters:
        return noop_adapters(**{"blobs": galley_blobs, **overrides})

    return make


@pytest.fixture
def galley_blobs(tmp_path: Path) -> Any:
    """A BlobStore on files under the test's temporary folder (``tmp_path / "blobs"``)."""
    from galley.adapters.fsspec.blobs import FsspecBlobStore

    return FsspecBlobStore(str(tmp_path / "blobs"))


@pytest.fixture
def galley_metrics(tmp_path: Path) -> Any:
    """A MetricsStore of JSONL files under ``tmp_path / "metrics"`` (rows read back)."""
    from galley.adapters.fsspec.metrics import JsonlMetricsStore

    return JsonlMetricsStore(str(tmp_path / "metrics"))


@pytest.fixture
def galley_completer() -> Callable[..., Any]:
    """A noop Completer answering from a script: ``galley_completer({"2+2": "4"})`` answers
    "4" to any prompt containing "2+2" (the longest key found wins) and echoes the others."""
    from galley.adapters.noop import NoopCompleter

    def make(scripted: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
        return NoopCompleter(scripted, **kwargs)

    return make


@pytest.fixture
def galley_faults() -> Callable[..., Any]:
    """Wrap any adapter in seeded transient failures and latency, optionally with retries:
    ``galley_faults(adapter, failure_rate=0.3, seed=1, retries=5)``. A failed call raises
    ``TransientError``; with ``retries``, each call is tried up to that many times."""
    from galley.adapters.helpers.faults import Faults
    from galley.adapters.wrappers.resilience import with_faults, with_retries
    from galley.core.retry import RetryPolicy

    def wrap(
        adapter: Any,
        *,
        failure_rate: float = 0.0,
        latency_s: float = 0.0,
        seed: int = 0,
        mid_write_failure_rate: float = 0.0,
        retries: int = 0,
    ) -> Any:
        faulty = with_faults(
            adapter, Faults(failure_rate, latency_s, seed), "adapter", mid_write_failure_rate
        )
        if retries:
            faulty = with_retries(faulty, RetryPolicy(retries, initial_backoff_s=0.0))
        return faulty

    return wrap


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed contract check's report names the guarantee it probes."""
    report = yield
    if report.failed and report.when == "call":
        guarantee = guarantee_of(item)
        if guarantee is not None:
            report.sections.append(("galley contract", f"broken guarantee: {guarantee}"))
    return report
