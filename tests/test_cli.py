"""The galley CLI: run sft end to end, list workflows and adapters, refuse bad config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from galley.adapters.cli import main
from galley.adapters.composition import AdapterChoice, build_adapters
from galley.adapters.run_config import load_run_config
from galley.core import ConfigError


def test_run_sft_on_noop(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    code = main(
        [
            "run",
            "sft",
            "--adapters",
            "noop",
            "--set",
            "max_steps=12",
            "--set",
            "run_id=cli",
            "--log-file",
            str(log),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "train" in out and "12/12" in out
    assert "held-out NLL" in out and "exact match" in out
    assert "galley://runs/cli/state/step-000012" in out and "galley://runs/cli/sampler/final" in out
    events = [json.loads(line) for line in log.read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[:2] == ["run.claimed", "workflow.start"] and names[-1] == "workflow.end"
    assert sum(n == "train.metrics" for n in names) == 12
    assert all(e["run_id"] == "cli" for e in events)


def test_toml_config_and_set_overrides(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        '[sft]\nmax_steps = 7\nlearning_rate = 1e-3\n\n[adapters]\ndefault = "noop"\n'
        '[adapters.training]\nkind = "noop"\nsensitivity = 42.0\n'
    )
    rc = load_run_config(
        "sft", config, ["learning_rate=2e-3", "adapters.completer.scripted={a = 'b'}"]
    )
    assert rc.config.max_steps == 7 and rc.config.learning_rate == 2e-3
    assert rc.adapters["training"] == AdapterChoice("noop", {"sensitivity": 42.0})
    adapters = build_adapters(rc.adapters)
    assert adapters.training.sensitivity == 42.0  # type: ignore[attr-defined]
    assert adapters.completer.scripted == {"a": "b"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("toml", "sets", "message"),
    [
        ("[sft]\nmax_stepz = 3\n", [], r"unknown key\(s\) max_stepz; valid keys: base_model"),
        ("[sfft]\n", [], r"unknown table\(s\) sfft; valid: \[sft\], \[adapters\]"),
        ("[adapters]\ntraining = 'tpu'\n", [], "unknown adapter kind 'tpu'; available: jax, noop"),
        (
            "[adapters]\ntrainer = 'noop'\n",
            [],
            r"unknown port\(s\) trainer; valid: default, training",
        ),
        (
            "[adapters.training]\nkind = 'noop'\nturbo = true\n",
            [],
            r"unknown key\(s\) turbo; valid keys: sensitivity",
        ),
        ("[sft]\nbatch_size = 'eight'\n", [], "batch_size"),
        ("not toml = = =", [], "is not valid TOML"),
        ("", ["nokey"], "expected key=value"),
        ("", ["adapters.training.a.b=1"], "expected adapters.PORT=KIND"),
    ],
)
def test_bad_config_lists_what_is_valid(
    tmp_path: Path, toml: str, sets: list[str], message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        rc = load_run_config("sft", config, sets)
        build_adapters(rc.adapters)


def test_config_errors_exit_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "sft", "--set", "max_stepz=1"]) == 2
    assert "unknown key(s) max_stepz" in capsys.readouterr().out
    assert main(["run", "sft", "--config", "/nonexistent.toml"]) == 2


def test_workflows_and_adapters_listings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows"]) == 0
    out = capsys.readouterr().out
    assert (
        "sft" in out and "forward_backward [training]" in out and "load_dataset [datasets]" in out
    )
    assert main(["adapters"]) == 0
    out = capsys.readouterr().out
    for port in ("training", "datasets", "blobs", "hub", "metrics", "completer"):
        assert port in out
    assert "local" in out


def test_console_script_is_installed() -> None:
    beside_python = Path(sys.executable).parent / "galley"
    exe = str(beside_python) if beside_python.exists() else shutil.which("galley")
    assert exe is not None, "the galley console script is not installed"
    done = subprocess.run(
        [exe, "run", "sft", "--adapters", "noop", "--set", "max_steps=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stdout
