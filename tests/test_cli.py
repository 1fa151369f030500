"""The galley CLI: run sft end to end, list workflows and adapters, refuse bad config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from galley.adapters.cli import main
from galley.adapters.cli.run_config import load_run_config
from galley.adapters.composition import AdapterChoice, build_adapters
from galley.core import ConfigError
from tests.test_run_integrity import P


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


NOOP_ON_DISK = P  # noop training on files a user can look at


def say(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [
        (RuntimeError("device lost"), 1, "stage 'optim_step' failed at step 5: RuntimeError"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_a_run_stopped_midway_says_how_to_continue(
    stop: BaseException,
    code: int,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failure exits 1, a Ctrl-C 130; either way the run lets go of its id and says how to
    continue from its last checkpoint."""
    from galley.adapters.noop.training import NoopTrainingSession

    monkeypatch.chdir(tmp_path)
    optim = NoopTrainingSession.optim_step

    def stopped_at_step_5(self: NoopTrainingSession, params: object) -> object:
        if self._params.step == 4:
            raise stop
        return optim(self, params)  # type: ignore[arg-type]

    monkeypatch.setattr(NoopTrainingSession, "optim_step", stopped_at_step_5)
    args = ["run", "sft", *NOOP_ON_DISK, "--set", "run_id=f", "--set", "checkpoint_every=2"]
    assert main([*args, "--set", "max_steps=8"]) == code
    out = say(capsys)
    assert said in out and "to continue from step 4: galley run sft --resume f" in out
    assert "Traceback" not in out
    assert not (tmp_path / "runs" / "f" / "run.lock").exists()


def test_input_refused_while_loading_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["run", "sft", *NOOP_ON_DISK, "--set", "run_id=i", "--set", "eval_split=none"]
    assert main([*args, "--set", "batch_size=250"]) == 2
    out = say(capsys)
    assert (
        "eval_holdout: holding out 25 of the 256 rows of 'galley/tiny-instruct' leaves 231, "
        "fewer than one batch (batch_size 250)"
    ) in out
    assert "nothing of the run was written" in out
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_failing_log_file_warns_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "sft", "--adapters", "noop", "--set", "max_steps=4"]) == 0
    capsys.readouterr()
    args = ["run", "sft", "--adapters", "noop", "--set", "max_steps=4", "-v"]
    assert main([*args, "--log-file", "/dev/full"]) == 0  # every write fails: disk full
    err = capsys.readouterr().err
    assert err.count("the log file '/dev/full' cannot be written") == 1


def test_secrets_given_as_settings_are_not_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    token = "hf_" + "a1B2c3D4e5" * 3
    sets = ["--set", f"base_model={token}", "--set", "adapters.blobs=fsspec"]
    sets += ["--set", "adapters.blobs.url=memory://bucket/galley", "--set", "max_steps=2"]
    assert main(["run", "sft", "--adapters", "noop", *sets]) == 0
    out = capsys.readouterr().out
    assert token not in out and "[redacted]" in out
    assert main(["run", "sft", "--adapters", "noop", "--set", f"dataset={token}", "--set", "x=1"])
    assert token not in capsys.readouterr().out  # nor on an error line
    # A password in a store's URL is refused (a library would quote it in its errors).
    url = "memory://alice:hunter2@bucket/galley"
    assert main(["run", "sft", "--adapters", "noop", *sets, "--set", f"adapters.blobs.url={url}"])
    out = " ".join(capsys.readouterr().out.split())
    assert "hunter2" not in out and "'memory://[redacted]@bucket/galley' holds a password" in out


def test_output_moves_the_metrics_with_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["run", "sft", *NOOP_ON_DISK, "--set", "run_id=o", "--set", "max_steps=2"]
    assert main([*args, "--set", "output=elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "o" / "metrics.jsonl").is_file()
    assert (tmp_path / "elsewhere" / "o" / "checkpoints.jsonl").is_file()
    assert not (tmp_path / "runs").exists()


def test_rows_too_long_to_fit_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(12)]
    rows[3] = {"prompt": "q", "completion": "a very long answer " * 20}  # trained: cannot fit
    rows[5] = {"prompt": "a very long question " * 20, "completion": "short"}  # prompt is cut
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["run", "sft", "--adapters", "noop", "--set", "adapters.datasets=hf"]
    args += ["--set", "dataset=data.jsonl", "--set", "max_length=64", "--set", "max_steps=2"]
    assert main([*args, "--set", "eval_holdout=2", "--set", "num_samples=0"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"(train|eval) rows too long \(skipped\)\W+1", " ".join(out.split()))
    assert "example.skipped" in err and "row=4" in err  # named as an editor numbers it
