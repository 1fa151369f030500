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
from galley.adapters.jax.model import Remat
from galley.adapters.jax.plan import Levers, plan_memory
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import LoraConfig, SessionConfig
from tests.benchmarks.common import ARCH as BENCH_ARCH
from tests.benchmarks.common import make_model as bench_model
from tests.hf_models import make_model
from tests.jax_steps import lowered_step, sequences


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3}
    return make_model(tmp_path_factory.mktemp("plan") / "m", "llama", **shape)


def compiled_bytes(folder: Path, rank: int, rows: int, length: int, levers: Levers) -> int:
    """What XLA allocates for one pass of ``forward_backward_step`` under ``levers`` (its
    arguments and its temporaries), plus the optimizer state the session holds meanwhile."""
    client = JaxTrainingClient(
        NoopHubClient(),
        NoopBlobStore(),
        scan_layers=levers.scan_layers,
        remat=levers.remat,
        logits_chunk=levers.logits_chunk,
    )
    s = client.start_session(SessionConfig(str(folder), LoraConfig(rank=rank)))
    analysis = lowered_step(s, sequences(rows // levers.passes_of(rows), length)).compile()
    optimizer = sum(a.nbytes for a in jax.tree.leaves(s._opt_state))
    memory = analysis.memory_analysis()
    return int(memory.argument_size_in_bytes + memory.temp_size_in_bytes + optimizer)


LEVERS = {
    "none": Levers(),
    "scanned": Levers(scan_layers=True),
    "remat full": Levers(remat=Remat.FULL, scan_layers=True),
    "remat dots": Levers(remat=Remat.DOTS, scan_layers=True),
    "logits in chunks": Levers(logits_chunk=128),
    "micro-batches": Levers(micro_batch_size=2),
}


# Every lever on a LoRA step; a full fine-tune's longer rows plain and rematerialised.
PLANNED = [(lever, 8, 8, 128) for lever in LEVERS] + [
    (lever, 0, 4, 256) for lever in ("none", "remat full")
]


@pytest.mark.parametrize(("lever", "rank", "rows", "length"), PLANNED)
def test_the_plan_is_within_a_fifth_of_the_compiled_step(
    folder: Path, rank: int, rows: int, length: int, lever: str
) -> None:
    from galley.adapters.jax.config import read_config

    levers = LEVERS[lever]
    plan = plan_memory(
        read_config(folder),
        LoraConfig(rank=rank),
        dtype=np.float32,
        mesh=MeshShape(),
        devices=1,
        rows=rows,
        length=length,
        levers=levers,
    )
    compiled = compiled_bytes(folder, rank, rows, length + 1, levers)
    assert 0.8 <= plan.total / compiled <= 1.2, (plan, compiled)
    assert plan.activations > plan.total / 3  # the estimate is what is being tested


def test_remat_and_chunked_logits_cut_the_benchmark_models_step(tmp_path: Path) -> None:
    """At 8 x 1024 tokens on the benchmark model (LoRA 16): scanned, remat=full cuts XLA's
    temporaries at least 3x; chunked logits cut the peak by at least 80% of the logits'
    float32 size (scanned, a layer's backward is the peak and the logits do not show)."""
    folder = tmp_path / "bench"
    bench_model(folder)

    def temporaries(**options: Any) -> int:
        client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), **options)
        s = client.start_session(SessionConfig(str(folder), LoraConfig(rank=16)))
        memory = lowered_step(s, sequences(8, 1025)).compile().memory_analysis()
        return int(memory.temp_size_in_bytes)

    scanned = temporaries(scan_layers=True)
    assert temporaries(scan_layers=True, remat="full") * 3 <= scanned
    logits = 8 * 1024 * BENCH_ARCH["vocab_size"] * 4
    assert temporaries() - temporaries(logits_chunk=1024) >= 0.8 * logits


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


def test_galley_plan_recommends_the_quickest_levers_that_fit(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--set", f"base_model={folder}", "--set", "batch_size=8", "--set", "max_length=256"]
    as_set = plan_json(capsys, *model)["bytes_per_device"]["total"]
    budget = as_set // 2
    advice = plan_json(capsys, *model, "--memory", str(budget))["recommended"]
    assert advice["bytes_per_device"]["total"] <= budget
    # Each lever alone saves something, and what it names is a setting galley run takes.
    assert all(saved > 0 for saved in advice["saves"].values())
    settings = [f"{k}={v}" for k, v in advice["settings"].items()]
    assert settings, "a budget of half the plan needs a lever"
    again = plan_json(capsys, *model, *(a for s in settings for a in ("--set", s)))
    assert again["bytes_per_device"]["total"] == advice["bytes_per_device"]["total"]


def test_galley_plan_refuses_a_budget_nothing_fits(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["plan", "sft", "--set", f"base_model={folder}", "--memory", "1MiB"]) == 2
    out = capsys.readouterr().out
    assert "nothing fits in 1.0 MiB per device" in out and "remat=full" in out
    assert main(["plan", "sft", "--memory", "lots"]) == 2
    assert "expected a size such as 24GiB" in capsys.readouterr().out
    assert main(["plan", "sft", "--set", "adapters.training.remat=some"]) == 2
    assert "remat: 'some' is not one of none, full, dots" in capsys.readouterr().out
