"""Run integrity: a run never trains on the wrong weights or settings, and never loses data.

Each test is a way a hostile user once got a silently wrong run (exit 0) out of galley: resuming
below the checkpoint, reusing or sharing a run id, a checkpoint that is not the one asked for,
a resume that forgot or changed the run's settings, a skipped step mistaken for an eval row.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.cli import main
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.noop import NoopTrainingClient, noop_adapters
from galley.core import Adapters, ConfigError, WorkflowError
from galley.core.configs import flatten_keys, leaf_fields
from galley.core.runs.layout import RunPaths
from galley.core.runs.run_record import (
    RunExistsError,
    RunInUseError,
    RunRecord,
    SettingsChangedError,
    read_run_record,
    saved_config,
)
from galley.core.stages import read_index
from galley.workflows.dpo import DPOConfig
from galley.workflows.rl import RLConfig
from galley.workflows.sft import SFTConfig, resume_config, run
from tests.test_reliability import NaNAtCall

ROOT = Path(__file__).resolve().parents[1]
# The adapters of the reproductions: noop training on files a user can look at.
P = [
    "--adapters",
    "noop",
    "--set",
    "adapters.blobs=fsspec",
    "--set",
    "adapters.metrics=jsonl",
    "--set",
    "num_samples=0",
]


@attrs.frozen
class Outcome:
    code: int
    text: str


Galley = Callable[..., Outcome]


@pytest.fixture
def galley(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Galley:
    """The CLI in a fresh folder: ``galley("run", "sft", ...)`` -> exit code and output."""
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> Outcome:
        capsys.readouterr()
        code = main(list(argv))
        return Outcome(code, " ".join(capsys.readouterr().out.split()))

    return call


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock, whose text names its last holder)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


def local_adapters(root: Path, **overrides: Any) -> Adapters:
    blobs = overrides.pop("blobs", None) or FsspecBlobStore(str(root))
    return noop_adapters(
        blobs=blobs,
        training=overrides.pop("training", NoopTrainingClient(blobs)),
        metrics=JsonlMetricsStore(str(root / "runs")),
        **overrides,
    )


def losses(rows: list[dict[str, float]]) -> list[tuple[float, float]]:
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


# -- 1. resuming below the checkpoint -------------------------------------------------------


def test_a_resume_below_the_checkpoint_is_refused_and_writes_nothing(
    galley: Galley, tmp_path: Path
) -> None:
    first = ["--set", "run_id=sh", "--set", "max_steps=10", "--set", "checkpoint_every=5"]
    assert galley("run", "sft", *P, *first).code == 0
    before = files(tmp_path / "runs" / "sh")
    # The default (linear) schedule: fewer steps would change every learning rate.
    refused = galley("run", "sft", *P, "--resume", "sh", "--set", "max_steps=3")
    assert refused.code == 2
    assert "max_steps: saved 10, given 3" in refused.text
    # Accepting the change does not make a step-10 checkpoint a step-3 one.
    below = galley("run", "sft", *P, "--resume", "sh", "--set", "max_steps=3", "--accept-changes")
    assert below.code == 2  # invalid input, refused before anything was written
    assert (
        "run 'sh' is to end at step 3, but its checkpoint 'runs/sh/state/step-000010' is "
        "already at step 10" in below.text
    )
    assert files(tmp_path / "runs" / "sh") == before  # no step-000003, index and record as were


class DiesExporting(FsspecBlobStore):
    """A store that fails for good when the sampler weights are written: a run that died
    after its last checkpoint."""

    def write(self, key: str, data: bytes) -> None:
        if "/sampler/" in key:
            raise OSError(f"disk gone writing {key}")
        super().write(key, data)


def test_a_run_that_died_after_its_last_checkpoint_finishes_on_resume(tmp_path: Path) -> None:
    config = SFTConfig(max_steps=10, checkpoint_every=5, eval_every=4, num_samples=4, run_id="e")
    clean = run(config, local_adapters(tmp_path / "clean"))
    dying = DiesExporting(str(tmp_path / "died"))
    with pytest.raises(WorkflowError, match="export_sampler"):
        run(
            config,
            local_adapters(tmp_path / "died", blobs=dying, training=NoopTrainingClient(dying)),
        )
    finished = run(attrs.evolve(config, resume=True), local_adapters(tmp_path / "died"))
    assert finished.steps == 0  # nothing trained again: only eval, export and samples ran
    assert losses(finished.metrics) == losses(clean.metrics)
    assert finished.eval == clean.eval  # 0, 4, 8 and the final eval at 10, with exact match
    assert finished.sampler is not None and len(finished.samples) == 4
    key = "runs/e/state/step-000010/state.json"
    assert FsspecBlobStore(str(tmp_path / "died")).read(key) == FsspecBlobStore(
        str(tmp_path / "clean")
    ).read(key)


# -- 2. run ids are owned --------------------------------------------------------------------


def test_a_new_run_refuses_an_existing_id_and_leaves_it_untouched(
    galley: Galley, tmp_path: Path
) -> None:
    args = ["--set", "run_id=mine", "--set", "max_steps=6", "--set", "checkpoint_every=3"]
    assert galley("run", "sft", *P, *args).code == 0
    before = files(tmp_path / "runs" / "mine")
    again = galley("run", "sft", *P, *args, "--set", "learning_rate=0.1")
    assert again.code == 2
    assert "run 'mine' already exists ('runs/mine' holds its files or metrics)" in again.text
    assert "--resume mine" in again.text
    assert files(tmp_path / "runs" / "mine") == before


def test_an_id_with_only_metrics_elsewhere_is_taken_too(tmp_path: Path) -> None:
    """The blobs are fresh but the metrics store already has the id's rows: they would mix."""
    metrics = JsonlMetricsStore(str(tmp_path / "shared"))
    run(SFTConfig(max_steps=3, run_id="m", num_samples=0), noop_adapters(metrics=metrics))
    rows = metrics.read("m")
    with pytest.raises(RunExistsError, match="run 'm' already exists"):
        run(SFTConfig(max_steps=3, run_id="m", num_samples=0), noop_adapters(metrics=metrics))
    assert metrics.read("m") == rows


HOLD_AT_STEP = """
import sys
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.noop import NoopTrainingClient, noop_adapters
from galley.workflows.sft import SFTConfig, run

root = sys.argv[1]

class HoldAtStep3:
    def on_loop_start(self, loop, done, total): pass
    def on_metrics(self, stream, step, metrics): pass
    def on_iteration_end(self, loop, counter):
        if counter == 3:
            print("holding", flush=True)
            sys.stdin.read()  # wait, mid-run and holding the run, until the test says go

blobs = FsspecBlobStore(root)
adapters = noop_adapters(
    blobs=blobs, training=NoopTrainingClient(blobs), metrics=JsonlMetricsStore(root + "/runs")
)
config = SFTConfig(max_steps=8, checkpoint_every=2, num_samples=0, run_id="busy")
print(run(config, adapters, observers=[HoldAtStep3()]).steps, flush=True)
"""


def test_a_run_in_use_by_a_live_process_is_refused(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD_AT_STEP, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None
        while owner.stdout.readline().strip() != "holding":  # its log lines come first
            assert owner.poll() is None, "the owner process ended early"
        config = SFTConfig(max_steps=8, checkpoint_every=2, num_samples=0, run_id="busy")
        for attempt in (config, attrs.evolve(config, resume=True)):
            with pytest.raises(
                RunInUseError,
                match=rf"run 'busy' is in use by galley sft run 'busy' \(pid {owner.pid} on ",
            ):
                run(attempt, local_adapters(tmp_path))
        out = owner.communicate(input="", timeout=120)[0]
        assert out.strip().splitlines()[-1] == "8"  # it ran on undisturbed
    finally:
        owner.kill()
    assert [
        r.step for r in read_index(FsspecBlobStore(str(tmp_path)), RunPaths("runs", "busy"))
    ] == [
        2,
        4,
        6,
        8,
    ]
    steps = [r.step for r in JsonlMetricsStore(str(tmp_path / "runs")).read("busy")]
    assert steps.count(3) == 1  # one writer: no row twice


# -- 3. a checkpoint is matched with what asked for it ---------------------------------------


CONSTANT = SFTConfig(
    max_steps=6, checkpoint_every=2, num_samples=0, lr_schedule="constant", run_id="c"
)


def test_a_checkpoint_copied_over_another_is_refused_and_the_previous_one_used(
    tmp_path: Path,
) -> None:
    run(CONSTANT, local_adapters(tmp_path))
    state = tmp_path / "runs" / "c" / "state"
    shutil.rmtree(state / "step-000006")
    shutil.copytree(state / "step-000004", state / "step-000006")  # verifies, but is step 4
    resumed = run(attrs.evolve(CONSTANT, max_steps=9, resume=True), local_adapters(tmp_path))
    assert resumed.steps == 5  # from step 4, past the impostor
    alone = run(attrs.evolve(CONSTANT, max_steps=9, run_id="alone"), local_adapters(tmp_path))
    assert losses(resumed.metrics) == losses(alone.metrics)
    blobs = FsspecBlobStore(str(tmp_path))
    assert blobs.read("runs/c/state/step-000009/state.json") == blobs.read(
        "runs/alone/state/step-000009/state.json"
    )


def test_an_index_pointing_into_another_run_is_refused(tmp_path: Path) -> None:
    run(CONSTANT, local_adapters(tmp_path))
    run(attrs.evolve(CONSTANT, run_id="other", learning_rate=0.1), local_adapters(tmp_path))
    index = tmp_path / "runs" / "c" / "checkpoints.jsonl"
    other = tmp_path / "runs" / "other" / "checkpoints.jsonl"
    # (a) the other run's index copied in; (b) this run's entries with keys into the other run
    for text in (
        other.read_text(),
        index.read_text().replace("runs/c/state", "runs/other/state"),
    ):
        index.write_text(text)
        with pytest.raises(WorkflowError, match="none of its 3 checkpoints is usable") as info:
            run(attrs.evolve(CONSTANT, max_steps=8, resume=True), local_adapters(tmp_path))
        assert "of run 'other'" in str(info.value)


def test_a_run_record_copied_from_another_run_is_refused(tmp_path: Path) -> None:
    run(CONSTANT, local_adapters(tmp_path))
    run(attrs.evolve(CONSTANT, run_id="other"), local_adapters(tmp_path))
    record = tmp_path / "runs" / "c" / "run.json"
    record.write_bytes((tmp_path / "runs" / "other" / "run.json").read_bytes())
    with pytest.raises(ConfigError, match="is the record of run 'other', not of 'c'"):
        run(attrs.evolve(CONSTANT, resume=True), local_adapters(tmp_path))


# -- 4. resume knows the run's settings ------------------------------------------------------


class FailsAtStep(NoopTrainingClient):
    """A backend that fails for good at the n-th optim_step: an interrupted run."""

    def __init__(self, *args: Any, fail_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    def start_session(self, config: Any) -> Any:
        session = super().start_session(config)
        original, calls = session.optim_step, []

        def optim_step(params: Any) -> Any:
            calls.append(1)
            if len(calls) == self.fail_at:
                raise RuntimeError("backend lost")
            return original(params)

        session.optim_step = optim_step  # type: ignore[method-assign]
        return session


SETTINGS = [
    "--set",
    "run_id=s",
    "--set",
    "max_steps=24",
    "--set",
    "learning_rate=0.001",
    "--set",
    "batch_size=4",
    "--set",
    "checkpoint_every=8",
]


def test_resume_alone_continues_with_the_saved_settings(galley: Galley, tmp_path: Path) -> None:
    config = SFTConfig(
        run_id="s",
        max_steps=24,
        learning_rate=0.001,
        batch_size=4,
        checkpoint_every=8,
        num_samples=0,
    )
    blobs = FsspecBlobStore(".")
    adapters = noop_adapters(
        blobs=blobs, training=FailsAtStep(blobs, fail_at=13), metrics=JsonlMetricsStore("runs")
    )
    with pytest.raises(WorkflowError, match="backend lost"):
        run(config, adapters)
    resumed = galley("run", "sft", *P, "--resume", "s")
    assert resumed.code == 0, resumed.text
    assert "steps: 16" in resumed.text  # from the step-8 checkpoint to 24, not to 256
    alone = run(attrs.evolve(config, run_id="alone"), local_adapters(tmp_path))
    rows = JsonlMetricsStore("runs").read("s")
    last = {r.step: r.metrics["loss"] for r in rows if r.stream == "train"}
    assert sorted(last.items()) == losses(alone.metrics)  # every step, the first resumed too


def test_a_resume_that_changes_the_trajectory_is_refused_listing_each_change(
    galley: Galley, tmp_path: Path
) -> None:
    assert galley("run", "sft", *P, *SETTINGS).code == 0
    before = files(tmp_path / "runs" / "s")
    changed = [
        "--set",
        "learning_rate=0.003",
        "--set",
        "batch_size=8",
        "--set",
        "base_model=other/model",
        "--set",
        "eval_every=3",  # not part of the trajectory: fine on its own
    ]
    refused = galley("run", "sft", *P, "--resume", "s", *changed)
    assert refused.code == 2
    for change in (
        "learning_rate: saved 0.001, given 0.003",
        "batch_size: saved 4, given 8",
        "base_model: saved 'galley/tiny-lm', given 'other/model'",
    ):
        assert change in refused.text
    assert "eval_every" not in refused.text and "--accept-changes" in refused.text
    assert files(tmp_path / "runs" / "s") == before
    # The same through Python: a full config that forgot the run's settings.
    with pytest.raises(SettingsChangedError) as info:
        run(SFTConfig(run_id="s", resume=True), local_adapters(tmp_path))
    assert set(info.value.changes) == {"max_steps", "optim.learning_rate", "batch_size"}


def test_accepted_changes_continue_and_go_into_the_history(galley: Galley, tmp_path: Path) -> None:
    assert galley("run", "sft", *P, *SETTINGS).code == 0
    accepted = galley(
        "run",
        "sft",
        *P,
        "--resume",
        "s",
        "--set",
        "learning_rate=0.003",
        "--set",
        "eval_every=5",
        "--accept-changes",
    )
    assert accepted.code == 0, accepted.text
    adapters = local_adapters(tmp_path)
    record = read_run_record(adapters, "runs", "s")
    assert record is not None and len(record.history) == 1
    change = record.history[0]
    assert {k: (c.saved, c.given) for k, c in change.changes.items()} == {
        "optim.learning_rate": (0.001, 0.003),
        "evaluation.eval_every": (64, 5),
    }
    assert change.accepted == ("optim.learning_rate",)
    # The record now holds the accepted settings: the next plain resume continues with them.
    assert resume_config(adapters, "s").learning_rate == 0.003


def test_accepting_changes_without_a_resume_is_refused(galley: Galley) -> None:
    refused = galley("run", "sft", *P, "--accept-changes")
    assert refused.code == 2 and "--accept-changes applies to a resume" in refused.text


def test_max_steps_is_free_on_a_constant_schedule_only(tmp_path: Path) -> None:
    run(CONSTANT, local_adapters(tmp_path))
    longer = run(attrs.evolve(CONSTANT, max_steps=8, resume=True), local_adapters(tmp_path))
    assert longer.steps == 2
    record = read_run_record(local_adapters(tmp_path), "runs", "c")
    assert record is not None and record.history[-1].accepted == ()  # recorded, not refused
    linear = attrs.evolve(CONSTANT, lr_schedule="linear", run_id="lin")
    run(linear, local_adapters(tmp_path))
    with pytest.raises(SettingsChangedError, match="max_steps: saved 6, given 8"):
        run(attrs.evolve(linear, max_steps=8, resume=True), local_adapters(tmp_path))


@pytest.mark.parametrize("config", [SFTConfig, DPOConfig, RLConfig])
def test_every_config_field_is_classified_for_resume(config: Any) -> None:
    fields = {name for name, _ in leaf_fields(config)}
    sets = (config.TRAJECTORY_FIELDS, config.SCHEDULE_LENGTH_FIELDS, config.FREE_FIELDS)
    assert set().union(*sets) == fields, f"classify every {config.__name__} field"
    assert sum(len(s) for s in sets) == len(fields), "a field is in two classes"


@attrs.frozen
class RenamedConfig:
    """A config whose second version renamed ``lr`` to ``learning_rate``."""

    learning_rate: float = 0.1
    output: str = "runs"
    run_id: str | None = None
    resume: bool = False

    CONFIG_VERSION: ClassVar[int] = 2
    CONFIG_UPGRADES: ClassVar[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: lambda old: {"learning_rate": old.pop("lr"), **old}
    }

    def trajectory_fields(self) -> frozenset[str]:
        return frozenset({"learning_rate"})


def test_saved_configs_of_an_older_shape_are_upgraded_and_newer_ones_refused() -> None:
    old = RunRecord("w", "r", 1, {"lr": 0.5, "output": "runs", "run_id": "r"}, 0.0)
    assert saved_config(old, RenamedConfig) == RenamedConfig(0.5, run_id="r")
    newer = attrs.evolve(old, config_version=3)
    with pytest.raises(ConfigError, match="saved with config version 3; this galley reads"):
        saved_config(newer, RenamedConfig)


def test_a_run_saved_with_the_first_config_shape_resumes(galley: Galley, tmp_path: Path) -> None:
    """SFTConfig version 1 had ``truncate: bool`` (version 2: ``truncation``), no
    ``init_from`` (version 3) and was flat (version 4: sections, AdamW's betas and epsilon)."""
    assert galley("run", "sft", *P, "--set", "run_id=v1", "--set", "max_steps=4").code == 0
    path = tmp_path / "runs" / "v1" / "run.json"
    record = json.loads(path.read_text())
    flat = {k.rpartition(".")[2]: v for k, v in flatten_keys(record["config"]).items()}
    for later in ("truncation", "init_from", "adam_beta1", "adam_beta2", "adam_eps"):
        del flat[later]
    path.write_text(
        json.dumps({**record, "config": {**flat, "truncate": True}, "config_version": 1})
    )
    resumed = galley("run", "sft", *P, "--resume", "v1", "--set", "max_steps=4")
    assert resumed.code == 0, resumed.text
    upgraded = json.loads(path.read_text())
    assert upgraded["config_version"] == 4 and upgraded["history"] == []
    assert upgraded["config"]["render"]["truncation"] == "keep_start"  # what truncate=true did
    assert upgraded["config"]["model"]["init_from"] is None
    assert upgraded["config"]["optim"]["adam_beta2"] == 0.95  # AdamW's default, as it trained


# -- 5. metrics are durable before a checkpoint points past them -----------------------------
# (tests/test_resume.py kills runs on a buffering store right after a checkpoint's index line)

# -- 6. the stream is explicit ---------------------------------------------------------------


def test_a_run_whose_every_step_is_skipped_reports_it(galley: Galley) -> None:
    done = galley(
        "run",
        "sft",
        "--adapters",
        "noop",
        "--set",
        "adapters.training.sensitivity=nan",
        "--set",
        "on_nonfinite=skip",
        "--set",
        "max_steps=5",
    )
    assert done.code == 0, done.text
    assert re.search(r"skipped steps\W+5", done.text)
    assert "step 5/5: loss skipped step 5" in done.text  # the piped progress line


class NaNThenFail(FailsAtStep, NaNAtCall):
    """A NaN loss at the ``at``-th step, then a failure for good at the ``fail_at``-th."""


def test_resume_keeps_skipped_steps_in_the_train_stream(tmp_path: Path) -> None:
    config = SFTConfig(
        max_steps=12,
        checkpoint_every=5,
        eval_every=5,
        num_samples=0,
        run_id="k",
        on_nonfinite="skip",
    )
    clean = run(
        config,
        local_adapters(
            tmp_path / "a", training=NaNAtCall(FsspecBlobStore(str(tmp_path / "a")), at=7)
        ),
    )
    blobs = FsspecBlobStore(str(tmp_path / "b"))
    with pytest.raises(WorkflowError):
        run(config, local_adapters(tmp_path / "b", training=NaNThenFail(blobs, fail_at=12, at=7)))
    resumed = run(attrs.evolve(config, resume=True), local_adapters(tmp_path / "b"))
    assert resumed.steps == 2
    assert [m["step"] for m in resumed.metrics if m.get("skipped")] == [7]
    assert [e["step"] for e in resumed.eval] == [0, 5, 10, 12] == [e["step"] for e in clean.eval]
    assert losses(resumed.metrics) == losses(clean.metrics)


# -- the resume check, over every field ------------------------------------------------------

CHANGED_VALUES: dict[str, Any] = {
    "base_model": "other/model",
    "dataset": "other-data",
    "train_split": "all",
    "eval_split": "validation",
    "eval_holdout": 5,
    "max_steps": 7,
    "num_epochs": 2,
    "batch_size": 3,
    "learning_rate": 0.5,
    "lr_schedule": "cosine",
    "warmup_steps": 2,
    "min_lr_ratio": 0.5,
    "weight_decay": 0.1,
    "grad_clip_norm": 0.5,
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "max_length": 64,
    "truncation": "error",
    "train_on": "all_assistant_messages",
    "renderer": "chat_template",
    "checkpoint_every": 3,
    "keep_checkpoints": 2,
    "eval_every": 3,
    "eval_batch_size": 3,
    "submit_ahead": 0,
    "num_samples": 3,
    "sample_max_tokens": 3,
    "output": "elsewhere",
    "run_id": "p",
    "resume": True,
    "on_nonfinite": "skip",
    "call_timeout_s": 30.0,
}


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.sampled_from(["constant", "linear"]),
    changed=st.sets(st.sampled_from(sorted(CHANGED_VALUES)), max_size=4),
)
def test_a_resume_is_refused_exactly_when_a_trajectory_field_changes(
    schedule: str, changed: set[str]
) -> None:
    """Any saved run, any set of changed fields: refused iff one of them is part of the
    trajectory on the saved or the given schedule, and the refusal lists exactly those."""
    from galley.core.runs.run_record import claim_run, write_run_record

    saved = SFTConfig(run_id="p", max_steps=5, lr_schedule=schedule)
    adapters = noop_adapters()
    with claim_run(adapters, "sft", saved, log=structlog.get_logger()) as record:
        write_run_record(adapters, saved.output, record)
    changes = {k: CHANGED_VALUES[k] for k in changed - {"run_id", "output", "resume"}}
    given = attrs.evolve(saved, resume=True, **changes)
    dotted = {name.rpartition(".")[2]: name for name, _ in leaf_fields(SFTConfig)}
    named = {dotted[k]: v for k, v in changes.items()}
    trajectory = {k for k in named if k in saved.trajectory_fields() | given.trajectory_fields()}
    claim = claim_run(adapters, "sft", given, log=structlog.get_logger())
    if trajectory:
        with pytest.raises(SettingsChangedError) as info:
            claim.__enter__()
        assert set(info.value.changes) == trajectory
    else:
        with claim as resumed:
            assert flatten_keys(resumed.config) == {**flatten_keys(record.config), **named}
            assert [set(c.changes) for c in resumed.history] == ([set(named)] if named else [])
            assert all(c.accepted == () for c in resumed.history)


def test_a_resume_whose_metrics_cannot_be_read_is_refused_before_training(
    galley: Galley, tmp_path: Path
) -> None:
    assert galley("run", "sft", *P, "--set", "run_id=m", "--set", "max_steps=4").code == 0
    metrics = tmp_path / "runs" / "m" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 9, "metrics": {}}\n')
    before = files(tmp_path / "runs" / "m")
    refused = galley("run", "sft", *P, "--resume", "m", "--set", "max_steps=4")
    assert refused.code == 2
    assert re.search(r"metrics.jsonl, line \d+: expected a metrics row with run_id", refused.text)
    assert files(tmp_path / "runs" / "m") == before
