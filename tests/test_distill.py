"""Distillation: the teacher's advantages against a numpy reference, the workflow on noop
adapters (teachers by run, checkpoint and model; refusals; resume), and off-policy data
that `galley run sft` trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.cli import main
from galley.adapters.embedded import DATASETS
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.hf.datasets import HFDatasetStore
from galley.adapters.noop import noop_adapters
from galley.adapters.noop.tokenizer import ByteTokenizer
from galley.core import Adapters, SessionConfig
from galley.core.domain.distillation import reverse_kl, teacher_advantages, tokenizer_mismatch
from galley.core.errors import ConfigError, WorkflowError
from galley.workflows.distill import DistillConfig, TeacherDataset, run
from galley.workflows.sft import SFTConfig
from galley.workflows.sft import run as run_sft
from tests.test_rl import StopAfter

token_rows = st.lists(
    st.lists(st.floats(-12.0, 0.0), min_size=1, max_size=6), min_size=1, max_size=5
)


@settings(max_examples=100, deadline=None)
@given(token_rows, st.data())
def test_teacher_advantages_are_the_log_ratio_less_its_batch_mean(
    student: list[list[float]], data: st.DataObject
) -> None:
    teacher = [
        data.draw(st.lists(st.floats(-12.0, 0.0), min_size=len(s), max_size=len(s)))
        for s in student
    ]
    gaps = np.concatenate([np.subtract(t, s) for s, t in zip(student, teacher, strict=True)])
    got = teacher_advantages(student, teacher)
    assert [len(a) for a in got] == [len(s) for s in student]
    np.testing.assert_allclose(np.concatenate(got), gaps - gaps.mean(), atol=1e-9)
    assert reverse_kl(student, teacher) == pytest.approx(float(-gaps.mean()), abs=1e-9)


class ShiftedTokenizer(ByteTokenizer):
    """A tokenizer with the same size and special ids whose ids mean other bytes."""

    def encode(self, text: str) -> list[int]:
        return [(i + 1) % 256 for i in super().encode(text)]


def test_tokenizer_mismatch_names_what_differs() -> None:
    assert tokenizer_mismatch(ByteTokenizer(), ByteTokenizer()) is None
    assert "probe text" in str(tokenizer_mismatch(ByteTokenizer(), ShiftedTokenizer()))

    class Bigger(ByteTokenizer):
        @property
        def vocab_size(self) -> int:
            return 300

    assert (
        tokenizer_mismatch(ByteTokenizer(), Bigger()) == "vocab_size 300 against the student's 259"
    )


class TeacherTokenizerFor:
    """A training client whose sessions of ``base_model`` tokenize with ``ShiftedTokenizer``."""

    def __init__(self, inner: Any, base_model: str) -> None:
        self.inner, self.base_model = inner, base_model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start_session(self, config: SessionConfig) -> Any:
        session = self.inner.start_session(config)
        if config.base_model == self.base_model:
            session._tokenizer = ShiftedTokenizer()
        return session


SHORT = {"max_steps": 6, "eval_every": 3, "batch_size": 4, "num_samples": 2}


@pytest.fixture(scope="module")
def with_teacher() -> Adapters:
    """Noop adapters holding an SFT run ``teach`` to distil from."""
    adapters = noop_adapters()
    run_sft(SFTConfig(max_steps=30, run_id="teach", eval_every=0), adapters)
    return adapters


def test_the_student_moves_towards_the_teacher(with_teacher: Adapters) -> None:
    result = run(DistillConfig(teacher="teach", run_id="d", **SHORT), with_teacher)
    kl = [row["eval/teacher_kl"] for row in result.eval]
    assert len(kl) == 3 and abs(kl[-1]) < abs(kl[0])
    first = result.metrics[0]
    assert {"teacher_kl", "kl", "entropy", "reward", "rewards/exact_match/mean"} <= set(first)
    assert "frac_reward_zero_std" in first and first["kl"] < 1e-6  # on-policy


def test_a_teacher_by_checkpoint_key_is_the_run_it_was_saved_by(with_teacher: Adapters) -> None:
    by_run = run(DistillConfig(teacher="teach", run_id="r1", **SHORT), with_teacher)
    key = "runs/teach/state/step-000030"
    by_key = run(DistillConfig(teacher=key, run_id="r2", **SHORT), with_teacher)
    assert [m["teacher_kl"] for m in by_key.metrics] == [m["teacher_kl"] for m in by_run.metrics]
    # A model by name: the base model itself, so the student starts as its teacher.
    by_model = run(DistillConfig(teacher="galley/tiny-lm", run_id="r3", **SHORT), with_teacher)
    assert by_model.eval[0]["eval/teacher_kl"] == pytest.approx(0.0, abs=1e-6)


def test_a_teacher_that_tokenizes_otherwise_is_refused_naming_both() -> None:
    adapters = noop_adapters()
    adapters = adapters.replace(training=TeacherTokenizerFor(adapters.training, "other/model"))
    with pytest.raises(WorkflowError) as caught:
        run(DistillConfig(teacher="other/model", run_id="x", **SHORT), adapters)
    assert isinstance(caught.value.__cause__, ConfigError)
    message = str(caught.value)
    assert "'other/model'" in message and "'galley/tiny-lm'" in message
    assert "tokenizes otherwise" in message


def test_without_a_teacher_the_command_says_how_to_make_one_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "distill", "--adapters", "noop"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "galley run sft" in out and "--set teacher=" in out
    assert not (tmp_path / "runs").exists()


def test_a_distillation_stopped_and_resumed_trains_as_an_unbroken_one(
    with_teacher: Adapters,
) -> None:
    config = DistillConfig(teacher="teach", checkpoint_every=2, run_id="cut", **SHORT)
    whole = run(attrs.evolve(config, run_id="whole"), with_teacher)
    with pytest.raises(RuntimeError, match="stopped after step 5"):
        run(config, with_teacher, observers=[StopAfter(5)])
    resumed = run(attrs.evolve(config, resume=True), with_teacher)
    keys = ("teacher_kl", "loss", "grad_norm")
    assert [[m[k] for k in keys] for m in resumed.metrics] == [
        [m[k] for k in keys] for m in whole.metrics
    ]


def test_off_policy_writes_the_teachers_answers_as_data_sft_trains_on(tmp_path: Path) -> None:
    adapters = noop_adapters().replace(
        blobs=FsspecBlobStore(str(tmp_path)), datasets=HFDatasetStore(local_root=DATASETS)
    )
    run_sft(SFTConfig(max_steps=30, run_id="teach", eval_every=0), adapters)
    result = run(DistillConfig(teacher="teach", run_id="off", mode="off_policy"), adapters)
    assert isinstance(result, TeacherDataset)  # no trained-run fields left blank
    assert result.teacher_dataset == "runs/off/teacher_data"
    record = json.loads((tmp_path / "runs" / "off" / "run.json").read_text())  # it is listed
    assert record["workflow"] == "distill" and record["config"]["mode"] == "off_policy"
    folder = tmp_path / "runs" / "off" / "teacher_data"
    prompts = [
        json.loads(line)["messages"][:-1]
        for line in (DATASETS / "galley/tiny-instruct/train.jsonl").read_text().splitlines()
    ]
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert len(rows) == len(prompts)
    assert (folder / "eval.jsonl").read_text().count("\n") == 48  # the test split
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert all(r["messages"][-1]["content"] == r["messages"][-1]["content"].strip() for r in rows)
    assert all(r["messages"][:-1] in prompts for r in rows)
    student = run_sft(
        SFTConfig(dataset=str(folder), max_steps=4, run_id="student", eval_every=0), adapters
    )
    assert student.steps == 4


def test_a_teacher_that_is_nothing_known_is_refused_saying_what_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from galley.adapters.composition import build_adapters
    from galley.core.errors import NotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkflowError) as caught:
        run(DistillConfig(teacher="nope", run_id="x", **SHORT), build_adapters({}))
    assert isinstance(caught.value.__cause__, NotFoundError)
    assert "teacher 'nope' is no run under 'runs', no checkpoint" in str(caught.value)
