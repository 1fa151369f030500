"""The testing kit as a user meets it: a project of their own, with adapters of their own,
checked by the contract suites and tested with the ``galley_`` fixtures, in a pytest run of
its own; broken adapters fail naming the guarantee they break."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import galley.adapters.testing as kit
from galley.adapters.testing import plugin
from galley.core import TransientError

ADAPTERS = '''
"""A user's adapters: a namespaced blob store, a list-backed metrics store, and a training
client that counts the requests it passes to the noop one."""

import os
from concurrent.futures import Future

from galley.adapters.noop import NoopBlobStore, NoopTrainingClient

BROKEN = os.environ.get("BROKEN", "")


class NamespacedBlobStore:
    """Every key under one namespace of a shared store."""

    def __init__(self, inner, namespace):
        self.inner, self.namespace = inner, namespace

    def _key(self, key):
        from galley.core.keys import check_key

        check_key(key)
        return f"{self.namespace}/{key}"

    def read(self, key):
        return self.inner.read(self._key(key))

    def stream(self, key, chunk_size=1 << 20):
        return self.inner.stream(self._key(key), chunk_size)

    def write(self, key, data):
        self.inner.write(self._key(key), data)

    def exists(self, key):
        return self.inner.exists(self._key(key))

    def list(self, prefix=""):
        cut = len(self.namespace) + 1
        keys = [k[cut:] for k in self.inner.list(f"{self.namespace}/{prefix}")]
        return keys[:-1] if BROKEN == "list" and len(keys) > 1 else keys

    def delete(self, key):
        self.inner.delete(self._key(key))

    def lock(self, key, owner):
        from galley.core import LockedError

        try:
            return self.inner.lock(self._key(key), owner)
        except LockedError as e:
            raise LockedError(key, e.holder) from None  # the key as our caller named it


class ListMetricsStore:
    def __init__(self):
        self.pending, self.rows = [], []

    def record(self, record):
        self.pending.append(record)

    def flush(self):
        self.rows += self.pending
        self.pending = []

    def read(self, run_id):
        return [r for r in self.rows if r.run_id == run_id]


class CountingSession:
    def __init__(self, inner):
        self.inner, self.requests = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward_backward(self, *args, **kwargs):
        self.requests += 1
        return self.inner.forward_backward(*args, **kwargs)

    def optim_step(self, params):
        self.requests += 1
        if BROKEN == "order":  # applied only when someone waits for it: too late
            future = Future()
            original = future.result

            def result(timeout=None):
                if not future.done():
                    future.set_result(self.inner.optim_step(params).result())
                return original(timeout)

            future.result = result
            return future
        return self.inner.optim_step(params)


class CountingTrainingClient:
    def __init__(self):
        self.inner = NoopTrainingClient(NoopBlobStore())

    def start_session(self, config):
        return CountingSession(self.inner.start_session(config))
'''

TESTS = """
import pytest

from galley.adapters.noop import NoopBlobStore
from galley.adapters.testing import (
    BlobStoreContract,
    MetricsStoreContract,
    TrainingClientContract,
)
from galley.core import TransientError
from galley.workflows.sft import SFTConfig, run
from my_adapters import CountingTrainingClient, ListMetricsStore, NamespacedBlobStore


class TestNamespacedBlobStore(BlobStoreContract):
    def make_store(self, tmp_path):
        shared = NoopBlobStore()
        shared.write("other-team/a/x", b"not ours")
        return NamespacedBlobStore(shared, "ours")


class TestListMetricsStore(MetricsStoreContract):
    def make_store(self, tmp_path):
        return ListMetricsStore()


class TestCountingTrainingClient(TrainingClientContract):
    def make_client(self, tmp_path):
        return CountingTrainingClient(), "galley/tiny-lm"


def test_my_workflow_on_fakes(galley_adapters, galley_metrics, galley_blobs):
    result = run(
        SFTConfig(max_steps=3, num_samples=0, run_id="mine"),
        galley_adapters(metrics=galley_metrics, training=CountingTrainingClient()),
    )
    assert result.steps == 3
    assert [r.step for r in galley_metrics.read("mine") if r.stream == "train"] == [1, 2, 3]
    assert galley_blobs.exists("runs/mine/run.json")


def test_retries_ride_out_injected_faults(galley_faults):
    flaky = galley_faults(ListMetricsStore(), failure_rate=1.0)
    with pytest.raises(TransientError):
        flaky.flush()
    steady = galley_faults(ListMetricsStore(), failure_rate=0.5, seed=3, retries=20)
    for _ in range(10):
        steady.flush()


def test_a_scripted_completer(galley_completer):
    from galley.core import SamplingParams

    completer = galley_completer({"capital of France": "Paris"})
    answer = completer.complete("The capital of France?", SamplingParams(max_tokens=5))
    assert answer.text == "Paris"
"""


def run_user_project(tmp_path: Path, broken: str = "") -> subprocess.CompletedProcess[str]:
    project = tmp_path / "project"
    if not project.exists():
        (project / "tests").mkdir(parents=True)
        (project / "my_adapters.py").write_text(textwrap.dedent(ADAPTERS))
        (project / "tests" / "test_my_adapters.py").write_text(textwrap.dedent(TESTS))
    env = {**os.environ, "PYTHONPATH": str(project), "BROKEN": broken}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user")


def test_a_users_adapters_pass_the_contracts_and_the_fixtures_work(project: Path) -> None:
    done = run_user_project(project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_a_store_whose_list_drops_keys_fails_naming_the_guarantee(project: Path) -> None:
    done = run_user_project(project, broken="list")
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert any("TestNamespacedBlobStore::test_list_gives_every_key" in f for f in failed)
    assert all("TestNamespacedBlobStore" in f for f in failed), failed
    assert "broken guarantee: BlobStore: list: sorted keys under the prefix" in done.stdout


def test_a_session_that_answers_out_of_order_fails_naming_the_guarantee(project: Path) -> None:
    done = run_user_project(project, broken="order")
    assert done.returncode == 1
    assert "FAILED tests/test_my_adapters.py::TestCountingTrainingClient::test_requests_run_in" in (
        done.stdout
    )
    assert (
        "broken guarantee: TrainingClient: Requests of a session execute in submission order"
        in done.stdout
    )


def test_every_contract_check_states_its_guarantee() -> None:
    suites = [getattr(kit, n) for n in kit.__all__ if n.endswith("Contract") and n != "Contract"]
    assert len(suites) == 7
    for suite in suites:
        assert suite.port, suite
        checks = [f for name, f in inspect.getmembers(suite) if name.startswith("test_")]
        assert checks
        for check in checks:
            assert inspect.getdoc(check), f"{suite.__name__}.{check.__name__} has no guarantee"


def test_the_plugin_is_registered_once_here_and_its_fixtures_work(
    pytestconfig: pytest.Config, galley_adapters: object, galley_faults: object
) -> None:
    names = [n for n, p in pytestconfig.pluginmanager.list_name_plugin() if p is plugin]
    assert names == ["galley"]  # from the entry point; galley's conftest adds none
    adapters = galley_adapters()  # type: ignore[operator]
    adapters.blobs.write("k", b"v")
    flaky = galley_faults(adapters.blobs, failure_rate=1.0)  # type: ignore[operator]
    with pytest.raises(TransientError):
        flaky.read("k")


def test_loading_the_plugin_imports_no_framework() -> None:
    heavy = ["jax", "flax", "optax", "datasets", "fsspec", "torch", "transformers", "wandb"]
    code = (
        "import sys, galley.adapters.testing.plugin\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
