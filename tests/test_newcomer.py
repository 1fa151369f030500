"""What a new user trips on: their own data and functions, arguments handed over wrongly,
help and output. Each test is a step a newcomer takes."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from galley.adapters.noop import noop_adapters
from galley.core import ConfigError, ValidationError
from galley.workflows.rl import RLConfig
from galley.workflows.rl import run as run_rl
from galley.workflows.sft import SFTConfig
from galley.workflows.sft import run as run_sft


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Another test's my_rewards may be imported already: each test imports its own.
    for name in ("my_rewards", "my_scorers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("my_rewards", "my_scorers"):
        sys.modules.pop(name, None)


def shouted(example: object, completion: str) -> float:
    """A reward defined at the top of a module: importable by the name it is recorded under."""
    return float(completion.isupper())


def test_a_reward_module_in_the_current_folder_is_found(in_tmp: Path) -> None:
    (in_tmp / "my_rewards.py").write_text("def loud(example, completion):\n    return 1.0\n")
    result = run_rl(RLConfig(rewards=["my_rewards:loud"], max_steps=1), noop_adapters())
    assert result.metrics[-1]["rewards/loud/mean"] == 1.0


def test_a_missing_reward_module_names_the_folder_searched(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=f"looked in the current folder '{in_tmp}'"):
        RLConfig(rewards=["my_rewards:loud"])


def test_rewards_may_be_functions_recorded_by_their_importable_name() -> None:
    config = RLConfig(rewards=[shouted], max_steps=2)
    assert config.rewards == (f"{__name__}:shouted",)
    result = run_rl(config, noop_adapters())
    assert "rewards/shouted/mean" in result.metrics[-1]


def test_a_lambda_as_a_reward_runs_with_a_warning_that_the_cli_cannot_resume_it() -> None:
    with structlog.testing.capture_logs() as logs:
        config = RLConfig(rewards=[lambda example, completion: 0.5], max_steps=1)
    (warning,) = [e for e in logs if e["event"] == "scorer.not_importable"]
    assert warning["log_level"] == "warning" and "cannot import it" in warning["note"]
    assert run_rl(config, noop_adapters()).metrics[-1]["reward"] == 0.5


def test_run_refuses_what_is_not_adapters_saying_what_was_expected() -> None:
    config = SFTConfig(max_steps=1)
    with pytest.raises(ValidationError, match=r"a function: call it, e.g. galley_adapters\(\)"):
        run_sft(config, noop_adapters)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="expected galley.core.Adapters, got builtins.dict"):
        run_sft(config, {"training": None})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="expected galley.core.Adapters"):
        run_sft(noop_adapters(), config)  # type: ignore[arg-type]


def test_a_jax_client_takes_its_mesh_as_a_mapping_and_refuses_an_unknown_axis() -> None:
    from galley.adapters.jax import JaxTrainingClient
    from galley.adapters.noop import NoopBlobStore, NoopHubClient

    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), mesh={"fsdp": 1})
    assert client.layout.mesh.shape == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ConfigError, match="mesh: unknown axis fdsp"):
        JaxTrainingClient(NoopHubClient(), NoopBlobStore(), mesh={"fdsp": 4})


def test_piped_output_has_a_line_every_few_steps_and_a_resume_says_where_it_resumed(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from galley.adapters.cli import main
    from tests.test_run_integrity import P

    args = ["run", "sft", *P, "--set", "run_id=p", "--set", "lr_schedule=constant"]
    assert main([*args, "--set", "max_steps=40", "--set", "checkpoint_every=10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 20 and steps[-1].startswith("step 40/40: loss ")
    assert all(
        re.fullmatch(r"step \d+/40: loss \d\.\d{4}, [\d,]+ tokens/s, ETA \S+", s) for s in steps
    )
    assert main(["run", "sft", *P, "--resume", "p", "--set", "max_steps=44"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 40 (checkpoint runs/p/state/step-000040)" in out
    assert next(line for line in out.splitlines() if line.startswith("step ")).startswith(
        "step 41/44"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sft"], ["loss", "held-out NLL", "learning rate"]),
        (["dpo"], ["loss", "preference accuracy", "reward margin", "learning rate"]),
        (["rl"], ["loss", "reward", "KL, sampler to learner", "learning rate"]),
        (
            ["distill", "--set", "teacher=galley/tiny-lm"],
            ["loss", "reward", "KL, sampler to learner", "KL to the teacher", "learning rate"],
        ),
        (["eval"], ["held-out NLL"]),
    ],
    ids=["sft", "dpo", "rl", "distill", "eval"],
)
def test_plot_draws_what_each_workflow_records(
    argv: list[str], expected: list[str], in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from galley.adapters.cli import main
    from tests.test_run_integrity import P

    steps = [] if argv[0] == "eval" else ["--set", "max_steps=4", "--set", "eval_every=2"]
    stores = P[:6] if argv[0] == "dpo" else P  # DPO samples no answers to leave out
    assert main(["run", *argv[:1], *stores, "--set", "run_id=w", *steps, *argv[1:]]) == 0
    capsys.readouterr()
    assert main(["plot", "w"]) == 0
    assert f"wrote runs/w/metrics.png ({', '.join(expected)})" in capsys.readouterr().out
    assert (in_tmp / "runs" / "w" / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_everything_a_command_writes_goes_under_one_root(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs, the model registry and the run's metrics under GALLEY_HOME's runs/ (or the
    current folder's), nothing beside it."""
    from galley.adapters.cli import main
    from tests.test_run_integrity import P

    home = in_tmp / "home"
    monkeypatch.setenv("GALLEY_HOME", str(home))
    stores = P[:6]  # noop training, files on disk
    assert main(["run", "sft", *stores, "--set", "run_id=h", "--set", "max_steps=2"]) == 0
    assert main(["models", "register", "h", "--name", "m", *stores]) == 0
    assert main(["plot", "h"]) == 0
    assert sorted(p.name for p in in_tmp.iterdir()) == ["home"]
    assert sorted(p.name for p in home.iterdir()) == ["runs"]
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["h", "registry"]
    assert (home / "runs" / "h" / "metrics.jsonl").is_file()
    assert "wrote " + str(home / "runs" / "h" / "metrics.png") in capsys.readouterr().out
