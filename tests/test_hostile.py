"""What hostile input used to break: each case reproduces a finding and checks it now holds
(a clear refusal, nothing written, the right exit code, no secret anywhere)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from galley.adapters.cli import main
from tests.test_run_integrity import P


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    yield
    sys.modules.pop("my_rewards", None)  # a test's own module: the next test writes its own


def said(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_cli(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as e:  # argparse's refusals
        return int(e.code or 0)


# --- galley serve -------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_serve_refuses_a_port_outside_1_to_65535(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("serve", "--port", port) == 2
    assert "expected a port number from 1 to 65535" in said(capsys)


def test_serve_refuses_a_port_in_use_and_a_host_that_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert run_cli("serve", "--port", port, "--adapters", "noop") == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in said(capsys)
    assert run_cli("serve", "--host", "no-such-host.invalid", "--api-key", "tml-k") == 2
    assert "--host 'no-such-host.invalid' does not resolve" in said(capsys)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-3"])
def test_serve_refuses_a_session_timeout_that_is_not_a_positive_number(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("serve", "--session-timeout", timeout) == 2
    assert "--session-timeout: expected a positive number of seconds" in said(capsys)


# --- lifecycle commands -------------------------------------------------------------------


def test_runs_list_lists_the_others_when_one_record_is_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for run_id in ("good", "bad"):
        assert run_cli("run", "sft", *P, "--set", "max_steps=2", "--set", f"run_id={run_id}") == 0
    (tmp_path / "runs" / "bad" / "run.json").write_text("{not json")
    capsys.readouterr()
    assert run_cli("runs", "list", *P) == 0
    out = said(capsys)
    assert "good │ sft" in out and "bad │ unreadable" in out
    assert "bad: run record 'runs/bad/run.json' is unreadable" in out


@pytest.mark.parametrize("target", ["/etc/passwd:4", "../x:1", "a\x1bb:2", "x" * 300 + ":1"])
def test_checkpoint_commands_refuse_a_run_that_is_not_a_name_and_make_no_folder(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("checkpoints", "delete", target, *P) == 2
    assert "give RUN[:STEP] with a run id" in said(capsys)
    assert files_under(tmp_path) == []


def test_checkpoints_show_fails_on_a_corrupt_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--set", "max_steps=2", "--set", "run_id=c"]
    assert run_cli("run", "sft", *P, *args) == 0
    (state,) = (tmp_path / "runs" / "c" / "state").glob("step-*/state.json")
    state.write_text(state.read_text() + " ")
    capsys.readouterr()
    assert run_cli("checkpoints", "show", "c:2", *P) == 1
    assert "verified: NO" in said(capsys)


# --- refusals leave nothing behind --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "distill"],  # no teacher: refused by its first stage
        ["run", "eval", "--set", "from_run=nope"],
        ["run", "sft", "--set", "max_steps=0"],
        ["run", "sft", "--resume", "nope"],
    ],
    ids=["distill without a teacher", "eval of no run", "bad setting", "resume of no run"],
)
def test_a_refused_run_leaves_no_folder(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*argv, "--set", "adapters.training=noop") == 2
    assert "error:" in said(capsys)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("run_id", "why"),
    [("x" * 300, "300 characters is too long"), ("a\x07b", "holds a control character")],
)
def test_run_ids_too_long_or_with_control_characters_are_refused(
    run_id: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("run", "sft", *P, "--set", f"run_id={json.dumps(run_id)}") == 2
    assert why in said(capsys)
    assert files_under(tmp_path) == []


def test_the_probe_environment_has_no_stray_folder() -> None:
    assert os.listdir(".") == []


# --- rewards and the rows they score ------------------------------------------------------

NOOP_RL = [*P, "--set", "max_steps=2", "--set", "adapters.completer=noop"]


def test_rows_without_a_reference_are_refused_for_rewards_that_compare_with_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": f"Shout this: word {i}"} for i in range(12)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        "run",
        "rl",
        *NOOP_RL,
        "--set",
        "adapters.datasets=hf",
        "--set",
        "dataset=prompts.jsonl",
    ]
    assert run_cli(*argv) == 2
    out = said(capsys)
    assert re.search(r"prompts.jsonl\[train\], row \d+, field 'reference': the row has no ref", out)
    assert "reward 'char_similarity' compares answers with one" in out
    assert files_under(tmp_path) == ["prompts.jsonl"]
    # A reward that needs no reference runs on the same rows.
    assert run_cli(*argv, "--set", 'rewards=["regex:[A-Z]"]') == 0


REWARDS = """
import numpy as np

def text(example, completion):
    return "0.5"

def nan(example, completion):
    return float("nan")

def leaves(example, completion):
    raise SystemExit(3)

def few(prompts, completions, **columns):
    return [1.0]

def none(example, completion):
    return None

def numpy_float(example, completion):
    return np.float32(0.25)
"""


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ("text", "returned str '0.5' for completion 0; expected a number"),
        ("nan", "returned nan for completion 0; rewards must be finite numbers"),
        ("leaves", "raised SystemExit: 3"),
        ("few", "returned 1 rewards for"),
        ("none", "returned NoneType None for completion 0; expected a number"),
    ],
)
def test_a_reward_that_returns_no_reward_is_named_and_exits_1_after_writing(
    reward: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reward module is found in the current folder; its bad values are refused (never
    coerced), named; the run was recorded, so the exit is 1 and the message says to fix it."""
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    argv = ["run", "rl", *NOOP_RL, "--set", f'rewards=["my_rewards:{reward}"]', "--set", "run_id=r"]
    assert run_cli(*argv) == 1
    out = said(capsys)
    assert f"reward 'my_rewards:{reward}' {message}" in out
    assert "fix the cause; then, to continue from" in out


def test_a_reward_of_a_numpy_scalar_is_a_number(tmp_path: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    assert run_cli("run", "rl", *NOOP_RL, "--set", 'rewards=["my_rewards:numpy_float"]') == 0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("reward_weights=[nan]", "reward_weights: expected finite numbers, got [nan]"),
        ('rewards="char_similarity"', "expected a list, got 'char_similarity'"),
    ],
)
def test_reward_settings_that_are_not_what_they_look_like_are_refused(
    setting: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("run", "rl", *NOOP_RL, "--set", setting) == 2
    assert message in said(capsys)
    assert files_under(tmp_path) == []


# --- settings that used to pass, fail by key order, or fail with someone else's words -----


@pytest.mark.parametrize(
    "document",
    [
        "[sft]\nlearning_rate = 0.001\n[sft.optim]\nlearning_rate = 0.002\n",
        "[sft.optim]\nlearning_rate = 0.002\n[sft]\nlearning_rate = 0.001\n",
    ],
    ids=["plain first", "section first"],
)
def test_a_setting_given_by_plain_name_and_in_its_section_is_refused_in_either_order(
    document: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run.toml").write_text(document)
    assert run_cli("run", "sft", "--adapters", "noop", "--config", "run.toml") == 2
    assert "run.toml [sft]: optim.learning_rate is given twice" in said(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--config", "run.toml", "--set", "max_steps=1.5"],
            "--set 'max_steps=1.5': expected an integer, got 1.5",
        ),
        (["--set", 'model="x"'], "--set 'model=\"x\"': expected a table of settings"),
        (
            ["--set", "adapters.training=jax", "--set", 'adapters.training.mesh="fsdp"'],
            "(jax): expected a table of settings (a TOML table or {key = value, ...}) @ "
            "JaxTrainingOptions.mesh",
        ),
        (["--set", 'output=""'], "SFTConfig.output: expected the folder runs go in"),
        (
            ["--set", 'adapters.metrics=["jsonl", "jsonl"]'],
            "[adapters].metrics: jsonl is listed twice with the same options",
        ),
        (["--trace", "."], "--trace '.' is a folder; expected a file"),
        (["--trace", "/dev/full/trace.json"], "--trace '/dev/full/trace.json' cannot be written"),
    ],
    ids=["set over toml", "section as a string", "mesh as a string", "empty output",
         "a sink twice", "trace to a folder", "trace under a file"],
)  # fmt: skip
def test_settings_are_refused_in_galleys_words_naming_where_they_came_from(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run.toml").write_text("[sft]\nmax_steps = 3\n")
    assert run_cli("run", "sft", "--set", "adapters.training=noop", *argv) == 2
    out = said(capsys)
    assert message in out and "unknown error" not in out
    assert files_under(tmp_path) == ["run.toml"]


def test_joining_a_distributed_run_without_a_coordinator_names_galleys_setting() -> None:
    """In a fresh process, as a user starts one (JAX joins before its first computation)."""
    argv = ["run", "sft", "--set", "adapters.training.distributed={}", "--set", "run_id=d"]
    code = f"from galley.adapters.cli import main; raise SystemExit(main({argv!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out
    assert "could not join the run: coordinator should be defined" in out
    assert "coordinator_address" not in out and 'coordinator = "HOST:PORT"' in out


@pytest.mark.parametrize("workflow", ["sft", "rl", "distill", "eval"])
def test_resuming_a_run_of_another_workflow_names_the_runs_own(
    workflow: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stores = P[:6]
    assert run_cli("run", "dpo", *stores, "--set", "run_id=d", "--set", "max_steps=2") == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_cli("run", workflow, *stores, "--resume", "d") == 2
    out = said(capsys)
    assert f"run 'd' belongs to the dpo workflow, not to {workflow}: resume it as a dpo" in out
    assert "galley run dpo --resume d" in out
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_scorer_that_returns_nan_or_text_is_named() -> None:
    from galley.adapters.noop import noop_adapters
    from galley.core import WorkflowError
    from galley.workflows.eval import EvalConfig
    from galley.workflows.eval import run as run_eval

    def nan_score(example: object, completion: str) -> float:
        return float("nan")

    def text_score(example: object, completion: str) -> str:
        return "1"

    for scorer, said_ in ((nan_score, "returned nan"), (text_score, "returned str '1'")):
        with pytest.raises(WorkflowError, match=f"scorer '.*{scorer.__name__}' {said_}"):
            run_eval(EvalConfig(scorers=[scorer], max_examples=4), noop_adapters())


def test_the_arguments_a_library_may_record_carry_no_secret() -> None:
    """What the CLI leaves in ``sys.argv`` once parsed (W&B records it with a run)."""
    from galley.adapters.helpers.redaction import redact_argv, redact_text

    argv = [
        "galley", "run", "sft", "--set", "adapters.training.api_key=tml-abcdef123456",
        "--set", "adapters.blobs.url=s3://me:pa55word@bucket/x", "serve", "--api-key", "k3y-value",
    ]  # fmt: skip
    shown = " ".join(redact_argv(argv))
    assert "tml-abcdef123456" not in shown and "pa55word" not in shown and "k3y-value" not in shown
    assert "adapters.training.api_key=[redacted]" in shown
    # Once given on the command line, a secret is redacted wherever a library quotes it.
    assert "pa55word" not in redact_text('Invalid bucket name "me:pa55word@bucket"')
    assert "k3y-value" not in redact_text("401: key k3y-value refused")
