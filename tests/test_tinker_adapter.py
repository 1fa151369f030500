"""The `tinker` adapters (galley's ports over the official SDK) against a `galley serve` of
the JAX adapter on the embedded model, started by the test: the port contracts, and galley's
SFT and RL workflows through them."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker

from galley.adapters.cli.run_config import load_run_config
from galley.adapters.composition import build_adapters
from galley.adapters.embedded import MODELS
from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.noop import noop_adapters
from galley.adapters.serve import (
    BackgroundServer,
    KeyRing,
    ServeLimits,
    TinkerService,
    create_app,
)
from galley.adapters.testing.completer import CompleterContract
from galley.adapters.testing.training_client import TrainingClientContract
from galley.adapters.tinker import TinkerCompleter, TinkerTrainingClient
from galley.core.domain.types import LoraConfig, SessionConfig
from galley.core.errors import ConfigError, ValidationError
from galley.workflows import rl, sft
from tests.tinker_server import jax_adapters

BASE = "galley/tiny-lm"
KEY = "tml-local"


@pytest.fixture(autouse=True)
def _sdk_warnings() -> Iterator[None]:
    with warnings.catch_warnings():  # the SDK's own deprecation notices about its API
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    adapters = jax_adapters(tmp_path_factory.mktemp("served"))
    # Each contract check makes a client of its own, and the SDK can't unload a model: room
    # for all of them.
    service = TinkerService(adapters, limits=ServeLimits(max_models_per_tenant=256))
    with BackgroundServer(create_app(service, KeyRing())) as server:
        yield server.url


class TestTinkerTrainingContract(TrainingClientContract):
    @pytest.fixture(autouse=True)
    def _served(self, served: str) -> Iterator[None]:
        self.url = served
        yield
        if hasattr(self, "_client"):  # its SDK session ends, and the server frees its models
            self._client.close()

    def make_client(self, tmp_path: Path) -> tuple[TinkerTrainingClient, str]:
        return TinkerTrainingClient(self.url, KEY), BASE


class TestTinkerCompleterContract(CompleterContract):
    @pytest.fixture(autouse=True)
    def _served(self, served: str) -> Iterator[None]:
        self.url, self.made = served, []
        yield
        for completer in self.made:
            completer.close()

    def make_completer(self, tmp_path: Path) -> TinkerCompleter:
        service = tinker.ServiceClient(base_url=self.url, api_key=KEY)
        made = TinkerCompleter(
            service, hub=LocalDirectoryHub(MODELS), model=BASE, owns_service=True
        )
        self.made.append(made)
        return made


def test_what_the_api_cannot_do_is_refused_by_name(served: str) -> None:
    client = TinkerTrainingClient(served, KEY)
    with pytest.raises(ValidationError, match="LoRA adapters only"):
        client.start_session(SessionConfig(BASE, LoraConfig(rank=0)))
    with pytest.raises(ValidationError, match="alpha"):
        client.start_session(SessionConfig(BASE, LoraConfig(rank=4, alpha=8.0)))
    client.close()


def test_a_key_the_service_refuses_is_a_config_error_naming_no_key() -> None:
    keys = KeyRing.of({"tml-right-key": "a"}, "test")
    with BackgroundServer(create_app(TinkerService(noop_adapters()), keys)) as server:
        client = TinkerTrainingClient(server.url, "tml-wrong-key")
        with pytest.raises(ConfigError, match="refused the API key") as refused:
            client.start_session(SessionConfig(BASE, LoraConfig(rank=4)))
    assert "tml-wrong-key" not in str(refused.value)


def _adapters(tmp_path: Path, url: str | None) -> Any:
    sets = [f"adapters.blobs.url={tmp_path / 'blobs'}", f"adapters.metrics.url={tmp_path / 'runs'}"]
    if url is not None:
        for port in ("training", "completer"):
            sets += [
                f"adapters.{port}=tinker",
                f"adapters.{port}.base_url={url}",
                f"adapters.{port}.api_key={KEY}",
            ]
    return build_adapters(load_run_config("sft", None, sets).adapters)


def test_sft_through_the_sdk_matches_the_jax_adapter_in_process(
    served: str, tmp_path: Path
) -> None:
    config = sft.SFTConfig(max_steps=4, eval_every=2, num_samples=1, run_id="parity")
    local = sft.run(config, _adapters(tmp_path / "local", None))
    adapters = _adapters(tmp_path / "remote", served)
    remote = sft.run(config, adapters)
    adapters.training.close()
    adapters.completer.close()
    losses = [[m["loss"] for m in r.metrics if "loss" in m] for r in (local, remote)]
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert remote.eval[-1]["eval/nll"] == pytest.approx(local.eval[-1]["eval/nll"], abs=1e-5)
    assert remote.checkpoints[-1].state.key.startswith("tinker://")
    # The answers before and after, sampled through the `tinker` completer kind.
    assert [(s.base, s.tuned) for s in remote.samples] == [(s.base, s.tuned) for s in local.samples]


def test_rl_through_the_sdk_matches_the_jax_adapter_in_process(served: str, tmp_path: Path) -> None:
    """Seeded sampling, rewards and updates through the SDK give the in-process run's figures."""
    config = rl.RLConfig(
        max_steps=2,
        batch_size=2,
        group_size=2,
        max_tokens=4,
        eval_every=0,
        num_samples=0,
        run_id="rl-remote",
    )
    local = rl.run(config, _adapters(tmp_path / "local", None))
    adapters = _adapters(tmp_path / "remote", served)
    remote = rl.run(config, adapters)
    adapters.training.close()
    adapters.completer.close()
    rewards = [[m["reward"] for m in r.metrics if "reward" in m] for r in (local, remote)]
    assert len(rewards[0]) == 2 and all(0.0 <= r <= 1.0 for r in rewards[0])
    assert rewards[1] == pytest.approx(rewards[0], abs=1e-6)
    losses = [[m["loss"] for m in r.metrics if "loss" in m] for r in (local, remote)]
    assert len(losses[0]) == 2
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
