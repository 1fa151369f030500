"""Exact resume: a run SIGKILLed at any point and resumed ends exactly like an uninterrupted
run (same metrics, bit-identical final state); corrupt checkpoints are skipped; rolling
checkpoints never delete the last good one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.noop import noop_adapters
from galley.core import NotFoundError, ValidationError
from galley.core.runs.layout import RunPaths
from galley.core.stages import read_index
from galley.workflows.sft import SFTConfig, run

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import json, os, signal, sys
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.noop import NoopTrainingClient, noop_adapters
from galley.workflows.sft import SFTConfig, run

root, mode, at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

class Blobs(FsspecBlobStore):
    def write(self, key, data):
        if mode == "checkpoint" and key.endswith(f"state/step-{at:06d}/manifest.json"):
            die()  # the state blob is written, its manifest is not
        super().write(key, data)
        if mode == "after_index" and key.endswith("checkpoints.jsonl"):
            if f"step-{at:06d}" in data.decode():
                die()  # the checkpoint is complete and indexed: nothing after it ran

class BufferedMetrics(JsonlMetricsStore):
    # The JSONL store as it works on object stores: rows buffered until a flush.
    def __init__(self, url):
        super().__init__(url, flush_every=50)
        self.appendable = False
        os.makedirs(url + "/r", exist_ok=True)  # an object store needs no folders; a disk does

class Training(NoopTrainingClient):
    def start_session(self, config):
        session = super().start_session(config)
        optim, calls = session.optim_step, []
        def optim_step(params):
            calls.append(1)
            if mode == "step" and len(calls) == at:
                die()  # step `at` has its gradient but no update
            return optim(params)
        session.optim_step = optim_step
        return session

class KillBetweenSteps:
    def on_loop_start(self, loop, done, total): pass
    def on_iteration_end(self, loop, counter):
        if mode == "between" and counter == at:
            die()
    def on_metrics(self, stream, step, metrics): pass

blobs = Blobs(root)
metrics = BufferedMetrics(root + "/metrics")
adapters = noop_adapters(blobs=blobs, training=Training(blobs), metrics=metrics)
config = SFTConfig(
    max_steps=30, checkpoint_every=5, eval_every=10, num_samples=2, run_id="r", resume=resume
)
result = run(config, adapters, observers=[KillBetweenSteps()])
final = blobs.read(f"runs/r/state/step-{30:06d}/state.json").decode()
out = {"metrics": result.metrics, "eval": result.eval, "final_state": final, "steps": result.steps}
print(json.dumps(out))
"""


def launch(root: Path, mode: str, at: int, resume: bool) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", RUNNER, str(root), mode, str(at), "1" if resume else "0"]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


def outcome(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for row in result["metrics"]:
        row.pop("tokens_per_s")  # wall-clock, not a training result
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return outcome(launch(tmp_path_factory.mktemp("clean"), "none", 0, resume=False))


@pytest.mark.parametrize(
    ("mode", "at"), [("between", 12), ("step", 17), ("checkpoint", 15), ("after_index", 15)]
)
def test_killed_runs_resume_to_the_same_end(
    tmp_path: Path, uninterrupted: dict[str, Any], mode: str, at: int
) -> None:
    """The runs record metrics through a buffering store (as on S3: rows held until a flush
    every 50), so a kill loses what it buffered; none of that may be a row a resume keeps."""
    killed = launch(tmp_path, mode, at, resume=False)
    assert killed.returncode == -9  # really SIGKILLed
    index = read_index(FsspecBlobStore(str(tmp_path)), RunPaths("runs", "r"))
    assert index and all(
        FsspecBlobStore(str(tmp_path)).exists(f"{r.state.key}/manifest.json") for r in index
    )
    stored = JsonlMetricsStore(str(tmp_path / "metrics")).read("r")
    kept = {r.step for r in stored if r.stream == "train"}
    assert set(range(1, index[-1].step + 1)) <= kept  # durable before the index named the step
    assert {r.step for r in stored if r.stream == "eval"} >= {0, 10}
    resumed = outcome(launch(tmp_path, "none", 0, resume=True))
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["eval"] == uninterrupted["eval"]
    assert (
        resumed["final_state"] == uninterrupted["final_state"]
    )  # bit-identical weights and optimizer
    assert resumed["steps"] == 30 - index[-1].step


def local_adapters(root: Path) -> Any:
    blobs = FsspecBlobStore(str(root))
    from galley.adapters.noop import NoopTrainingClient

    return noop_adapters(
        blobs=blobs,
        training=NoopTrainingClient(blobs),
        metrics=JsonlMetricsStore(str(root / "metrics")),
    )


def test_a_corrupt_checkpoint_is_refused_and_the_previous_one_used(tmp_path: Path) -> None:
    config = SFTConfig(max_steps=20, checkpoint_every=5, num_samples=0, run_id="c")
    clean = run(config, local_adapters(tmp_path))
    state = tmp_path / "runs" / "c" / "state" / "step-000020" / "state.json"
    state.write_bytes(state.read_bytes()[:-7] + b"garbage")
    resumed = run(attrs.evolve(config, resume=True), local_adapters(tmp_path))
    assert resumed.steps == 5  # resumed from step 15, past the corrupt step-20 checkpoint
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in clean.metrics]


def test_rolling_checkpoints_keep_the_newest(tmp_path: Path) -> None:
    result = run(
        SFTConfig(max_steps=20, checkpoint_every=5, keep_checkpoints=2, num_samples=0, run_id="k"),
        local_adapters(tmp_path),
    )
    assert [c.step for c in result.checkpoints] == [15, 20]
    assert sorted(p.name for p in (tmp_path / "runs" / "k" / "state").iterdir()) == [
        "step-000015",
        "step-000020",
    ]  # no empty folders of dropped checkpoints either
    assert [r.step for r in read_index(FsspecBlobStore(str(tmp_path)), RunPaths("runs", "k"))] == [
        15,
        20,
    ]


def test_resuming_needs_a_run_with_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="resuming needs the run_id"):
        SFTConfig(resume=True)
    with pytest.raises(NotFoundError, match="run 'nothing' has nothing to resume"):
        run(SFTConfig(max_steps=3, run_id="nothing", resume=True), local_adapters(tmp_path))
    assert not (tmp_path / "runs" / "nothing" / "run.json").exists()


def test_cli_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from galley.adapters.cli import main

    monkeypatch.chdir(tmp_path)
    common = [
        "--set",
        "adapters.training=noop",
        "--set",
        "adapters.completer=noop",
        "--set",
        "max_steps=10",
    ]
    assert main(["run", "sft", *common, "--set", "checkpoint_every=5", "--set", "run_id=cli"]) == 0
    (
        tmp_path / "runs" / "cli" / "state" / "step-000010" / "manifest.json"
    ).unlink()  # an interrupted save
    capsys.readouterr()
    assert main(["run", "sft", *common, "--set", "checkpoint_every=5", "--resume", "cli"]) == 0
    out = capsys.readouterr().out
    assert "steps: 5" in out and "runs/cli/state/step-000010" in out
