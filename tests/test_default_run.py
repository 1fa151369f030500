"""The embedded default end to end through the CLI: a real LoRA fine-tune of the shipped
model on the shipped dataset, its files on disk, then `galley sample` and `galley plot`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from galley.adapters.cli import main
from galley.adapters.embedded import DATASETS, DEFAULT_DATASET, DEFAULT_MODEL, MODELS


def test_embedded_model_and_dataset_ship_with_the_package() -> None:
    model = MODELS / DEFAULT_MODEL
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in model.iterdir()
    }
    assert json.loads((model / "config.json").read_text())["model_type"] == "llama"
    for split in ("train", "test"):
        rows = [
            json.loads(line)
            for line in (DATASETS / DEFAULT_DATASET / f"{split}.jsonl").read_text().splitlines()
        ]
        assert rows and all(r["messages"][1]["role"] == "assistant" for r in rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("cwd")
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        args = [
            "--set",
            "max_steps=16",
            "--set",
            "run_id=e2e",
            "--set",
            "eval_every=8",
            "--set",
            "num_samples=2",
        ]
        code = main(["run", "sft", *args])
    finally:
        os.chdir(old)
    assert code == 0
    return cwd / "runs" / "e2e"


def test_default_run_writes_checkpoints_exports_and_metrics(run_dir: Path) -> None:
    index = [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in index] == [16]
    assert (run_dir / "state" / "step-000016" / "manifest.json").is_file()
    assert (run_dir / "sampler" / "final" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r["metrics"]]
    evals = [r["metrics"]["eval/nll"] for r in rows if "eval/nll" in r["metrics"]]
    assert [r["step"] for r in train] == list(range(1, 17))
    assert len(evals) == 3 and evals[-1] < evals[0]  # held-out loss fell
    assert any("eval/exact_match" in r["metrics"] for r in rows)


def test_sample_and_plot_the_run(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir / "sampler" / "final"),
                "--max-tokens",
                "12",
                "Shout this: blue boat",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "> Shout this: blue boat" in out and len(out.strip().splitlines()) >= 2
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_refuses_a_folder_that_is_not_sampler_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sample", "--checkpoint", str(tmp_path), "hi"]) == 2
    assert "not exported sampler weights" in capsys.readouterr().out


def test_the_readmes_after_training_block_runs_verbatim_after_the_default_job(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default job saves no sampler weights with its checkpoints: the registered model's
    newest step samples from the run's final export."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = readme.split("## After training", 1)[1]
    block = re.search(r"```bash\n(.*?)```", after, flags=re.S)
    assert block is not None
    commands = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    monkeypatch.chdir(run_dir.parent.parent)
    for command in filter(None, commands):
        words = shlex.split(command.replace("<run_id>", "e2e"))
        assert words[0] == "galley"
        assert main(words[1:]) == 0, (command, capsys.readouterr().out[-2000:])
    out = capsys.readouterr().out
    assert "registered shout-v1: e2e step 16" in out and "> Shout this: red boat" in out
    assert (run_dir.parent.parent / "shout-v1-export" / "adapter_model.safetensors").is_file()
