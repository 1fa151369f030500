"""``galley plan``: the memory a training step takes per device, before anything loads,
against XLA's own memory analysis of the compiled step. (Each device's weights and optimizer
state, counted on real meshes: tests/test_jax_mesh.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from galley.adapters.cli import main
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.plan import plan_memory
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import Datum, LoraConfig, SessionConfig
from tests.hf_models import make_model
from tests.jax_steps import lowered_step


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3}
    return make_model(tmp_path_factory.mktemp("plan") / "m", "llama", **shape)


def compiled_bytes(folder: Path, rank: int, rows: int, length: int, *, scan: bool) -> int:
    """What XLA allocates for ``forward_backward_step`` (its arguments and its temporaries),
    plus the optimizer state the session holds meanwhile."""
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), scan_layers=scan)
    s = client.start_session(SessionConfig(str(folder), LoraConfig(rank=rank)))
    data = [
        Datum.from_tokens([(3 + i + j) % 200 for j in range(length)], [1.0] * length)
        for i in range(rows)
    ]
    analysis = lowered_step(s, data).compile().memory_analysis()
    optimizer = sum(a.nbytes for a in jax.tree.leaves(s._opt_state))
    return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + optimizer)


@pytest.mark.parametrize(
    ("rank", "rows", "length", "scan"), [(8, 8, 128, False), (0, 4, 256, True)]
)
def test_the_plan_is_within_a_fifth_of_the_compiled_step(
    folder: Path, rank: int, rows: int, length: int, scan: bool
) -> None:
    from galley.adapters.jax.config import read_config

    plan = plan_memory(
        read_config(folder),
        LoraConfig(rank=rank),
        dtype=np.float32,
        mesh=MeshShape(),
        devices=1,
        rows=rows,
        length=length,
    )
    compiled = compiled_bytes(folder, rank, rows, length + 1, scan=scan)
    assert 0.8 <= plan.total / compiled <= 1.2, (plan, compiled)
    assert plan.activations > plan.total / 2  # the estimate is what is being tested


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["plan", "sft", "--json", *args]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_galley_plan_reads_the_runs_settings_and_splits_over_the_mesh(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--set", f"base_model={folder}", "--set", "batch_size=8", "--set", "max_length=100"]
    one = plan_json(capsys, *model)
    assert one["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and one["devices"] == 1
    fsdp = plan_json(capsys, *model, "--set", "adapters.training.mesh={fsdp = 4}")
    assert fsdp["devices"] == 4
    for part in ("frozen weights", "trainable weights", "optimizer state"):
        # Every matrix splits four ways; the norms stay whole.
        assert one["bytes_per_device"][part] / 4 <= fsdp["bytes_per_device"][part]
        assert fsdp["bytes_per_device"][part] < one["bytes_per_device"][part] / 3.5
    # Rows split over fsdp too: each device keeps a quarter of the activations.
    ratio = (
        fsdp["bytes_per_device"]["activations (estimate)"]
        / one["bytes_per_device"]["activations (estimate)"]
    )
    assert ratio == pytest.approx(0.25, rel=0.01)


def test_galley_plan_refuses_other_training_adapters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "sft", "--set", "adapters.training=noop"]) == 2
    assert "galley plan knows the jax training adapter" in capsys.readouterr().out
    assert main(["plan", "eval"]) == 2
    assert "the eval workflow trains none" in capsys.readouterr().out


def test_galley_plan_counts_each_workflows_sequences_a_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def batch(workflow: str) -> int:
        capsys.readouterr()
        assert main(["plan", workflow, "--set", "batch_size=4"]) == 0
        line = capsys.readouterr().out.split("\n")[0]
        return int(line.split(" sequences")[0].rsplit(" ", 1)[1])

    assert batch("sft") == 4
    assert batch("dpo") == 8  # two answers a pair
    assert batch("rl") == 4 * 8  # group_size 8 by default
