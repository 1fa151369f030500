"""The default job (the JAX adapter on the embedded model and dataset), SIGKILLed mid-training
and mid-checkpoint, resumed from the command line with its settings repeated and with
``--resume`` alone: per-step losses, eval and final weights equal an uninterrupted run's, bit
for bit. The killed legs run in their own process; the others run here, where the job's steps
are already compiled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from galley.adapters.cli import main
from galley.adapters.fsspec.metrics import JsonlMetricsStore

JOB = ["--set", "max_steps=6", "--set", "checkpoint_every=2", "--set", "num_samples=0"]
RUN = ["run", "sft", "--set", "run_id=job", *JOB]

# Kill points, set up the way a test hook is: by patching the adapters in the killed process.
KILLED = """
import os, signal, sys
from galley.adapters import cli
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.metrics import JsonlMetricsStore

where, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if where == "training":  # step `at` is trained, its metrics not yet stored
    record = JsonlMetricsStore.record
    def dying_record(self, row):
        if row.stream == "train" and row.step == at:
            die()
        record(self, row)
    JsonlMetricsStore.record = dying_record
else:  # "checkpoint": the state of step `at` is written, its manifest not
    write = FsspecBlobStore.write
    def dying_write(self, key, data):
        if key.endswith(f"state/step-{at:06d}/manifest.json"):
            die()
        write(self, key, data)
    FsspecBlobStore.write = dying_write
sys.exit(cli.main(argv))
"""


def kill(folder: Path, where: str, at: int) -> None:
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", KILLED, where, str(at), *RUN],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == -9, done.stdout[-2000:] + done.stderr[-2000:]  # really SIGKILLed


def in_folder(folder: Path, monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    assert main(list(argv)) == 0


def outcome(folder: Path) -> dict[str, object]:
    """Per-step losses and eval (the last row of a step: a resume trains some steps again),
    and the bytes of the final training state and the exported adapter."""
    rows = JsonlMetricsStore(str(folder / "runs")).read("job")
    last = {(r.stream, r.step): dict(r.metrics) for r in rows}
    run = folder / "runs" / "job"
    return {
        "losses": {s: m["loss"] for (stream, s), m in sorted(last.items()) if stream == "train"},
        "eval": {s: m["eval/nll"] for (stream, s), m in sorted(last.items()) if stream == "eval"},
        "state": (run / "state" / "step-000006" / "state.safetensors").read_bytes(),
        "adapter": (run / "sampler" / "final" / "adapter_model.safetensors").read_bytes(),
    }


def test_the_default_job_resumes_bit_for_bit_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_folder(tmp_path / "clean", monkeypatch, *RUN)
    clean = outcome(tmp_path / "clean")
    assert list(clean["losses"]) == [1, 2, 3, 4, 5, 6] and list(clean["eval"]) == [0, 6]

    # Killed after step 5 (checkpoints 2 and 4 exist), resumed with every setting repeated.
    kill(tmp_path / "training", "training", 5)
    lock = tmp_path / "training" / "runs" / "job" / "run.lock"
    assert "galley sft run 'job' (pid" in lock.read_text()  # its dead owner's lock is left
    in_folder(tmp_path / "training", monkeypatch, *RUN[:2], *JOB, "--resume", "job")
    assert not lock.exists()  # taken over, then released
    assert outcome(tmp_path / "training") == clean

    # Killed writing the step-4 checkpoint (only step 2's is complete), resumed with
    # `--resume job` alone: the saved settings, not the defaults (256 steps, another LR).
    kill(tmp_path / "checkpoint", "checkpoint", 4)
    in_folder(tmp_path / "checkpoint", monkeypatch, "run", "sft", "--resume", "job")
    assert outcome(tmp_path / "checkpoint") == clean
