"""Runs saved by an earlier version of galley still resume, and their checkpoints still list.

``tests/fixtures/saved-runs`` holds an SFT, a DPO and an RL run as the version before typed
stage inputs saved them (config version 4, 1 and 1; two steps each, a constant learning rate,
LoRA rank 1). Each is copied, resumed for one more step through the command line, and listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from galley.adapters.cli import main

SAVED = Path(__file__).parent / "fixtures" / "saved-runs"


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(SAVED, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs"


@pytest.mark.parametrize("workflow", ["sft", "dpo", "rl"])
def test_a_saved_run_resumes_and_lists_its_checkpoints(
    workflow: str, runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = f"{workflow}-saved"
    assert main(["checkpoints", "list", run_id]) == 0
    listed = capsys.readouterr().out
    assert f"checkpoints of {run_id}" in listed and "│ 2 " in listed

    code = main(["run", workflow, "--resume", run_id, "--set", "max_steps=3"])
    assert code == 0, capsys.readouterr()
    assert "resumed from step 2" in capsys.readouterr().out
    index = [json.loads(line) for line in (runs / run_id / "checkpoints.jsonl").open()]
    assert index[-1]["step"] == 3
    assert (runs / run_id / "state" / "step-000003" / "manifest.json").exists()
