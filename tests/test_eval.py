"""`galley run eval`: a base model or a run's newest checkpoint, measured on a split by the
evaluators SFT uses, answers scored by built-in or user scorers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from galley.adapters.cli import main
from galley.adapters.noop import noop_adapters
from galley.core import ConfigError
from galley.core.runs.run_record import read_run_record
from galley.workflows.eval import EvalConfig
from galley.workflows.eval import run as evaluate
from galley.workflows.sft import SFTConfig
from galley.workflows.sft import run as train


def answer_is_lowercase(example: Mapping[str, Any], completion: str) -> float:
    """A user's scorer: 1 when the answer has letters and no capitals."""
    return float(completion.islower())


def test_the_base_model_is_measured_and_its_answers_scored() -> None:
    adapters = noop_adapters()
    config = EvalConfig(
        run_id="base",
        num_samples=4,
        scorers=(
            "exact_match",
            "contains",
            "regex:^[A-Za-z: ]+$",
            f"{__name__}:answer_is_lowercase",
        ),
    )
    result = evaluate(config, adapters)
    assert result.model == "galley/tiny-lm"
    assert result.metrics["eval/nll"] > 1.0 and result.metrics["eval/bits_per_byte"] > 1.0
    assert set(result.metrics) >= {
        "eval/exact_match",
        "eval/contains",
        "eval/regex",
        "eval/answer_is_lowercase",
    }
    # the noop completer echoes the prompt: no exact match; the regex matches the echo
    assert result.metrics["eval/exact_match"] == 0.0 and result.metrics["eval/regex"] == 1.0
    assert len(result.answers) == 4 and set(result.answers[0].scores) == {
        "exact_match",
        "contains",
        "regex",
        "answer_is_lowercase",
    }
    rows = adapters.metrics.read("base")  # the NLL row and the answers' row, both at step 0
    assert {(r.stream, r.step) for r in rows} == {("eval", 0)}
    assert {k: v for r in rows for k, v in r.metrics.items()} == result.metrics
    record = read_run_record(adapters, "runs", "base")
    assert record is not None and record.workflow == "eval"
    assert f"{__name__}:answer_is_lowercase" in record.config["scorers"]  # found again by path


def test_a_runs_newest_checkpoint_is_measured_as_the_run_measured_it() -> None:
    adapters = noop_adapters()
    trained = train(
        SFTConfig(max_steps=12, checkpoint_every=5, num_samples=0, run_id="s"), adapters
    )
    result = evaluate(EvalConfig(from_run="s", run_id="e", num_samples=2), adapters)
    assert result.model == "s at step 12"
    assert result.metrics["eval/nll"] == pytest.approx(trained.eval[-1]["eval/nll"], rel=1e-9)
    assert adapters.metrics.read("e")[0].step == 12


def test_a_run_trained_with_another_lora_shape_is_refused_naming_it() -> None:
    adapters = noop_adapters()
    train(SFTConfig(max_steps=2, num_samples=0, run_id="s", lora_rank=4), adapters)
    with pytest.raises(Exception, match="trained with lora_rank 4, this evaluation has 16"):
        evaluate(EvalConfig(from_run="s"), adapters)


@pytest.mark.parametrize("spec", ["nope", "regex:(", "tests.test_eval:missing", "os:sep"])
def test_a_scorer_that_cannot_be_found_is_refused_before_any_work(spec: str) -> None:
    with pytest.raises(ConfigError, match="scorer"):
        EvalConfig(scorers=(spec,))


def test_the_cli_runs_eval_like_any_workflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["run", "eval", "--adapters", "noop", "--set", "num_samples=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "galley/tiny-lm" in out and "eval/bits_per_byte" in out and "exact_match" in out
    assert main(["run", "eval", "--adapters", "noop", "--set", 'scorers=["nope"]']) == 2
    assert "unknown scorer 'nope'" in " ".join(capsys.readouterr().out.split())
    assert main(["workflows"]) == 0
    listed = capsys.readouterr().out
    assert "eval: Evaluate a base model" in listed and "load_run_weights" in listed
