"""The datasets-backed DatasetStore: every file format, save_to_disk, the contract, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from galley.adapters.hf.datasets import HFDatasetStore
from galley.adapters.noop import noop_adapters
from galley.adapters.testing import DatasetStoreContract
from galley.core import DataError, WorkflowError
from galley.core.domain.data_formats import row_to_conversation
from galley.workflows.sft import SFTConfig, run

ROWS = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(20)]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class TestJsonlDataset(DatasetStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = write_jsonl(tmp_path / "data.jsonl", ROWS)

    def make_store(self, tmp_path: Path) -> tuple[HFDatasetStore, str]:
        return HFDatasetStore(), str(self.path)


class TestSavedToDisk(DatasetStoreContract):
    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        chat = [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["completion"]},
                ]
            }
            for r in ROWS
        ]
        datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_list(chat),
                "test": datasets.Dataset.from_list(chat[:4]),
            }
        ).save_to_disk(tmp_path / "saved")
        self.path = tmp_path / "saved"

    def make_store(self, tmp_path: Path) -> tuple[HFDatasetStore, str]:
        return HFDatasetStore(), str(self.path)


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_other_file_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    table = datasets.Dataset.from_list(ROWS)
    {".json": table.to_json, ".csv": table.to_csv, ".parquet": table.to_parquet}[suffix](str(path))
    store = HFDatasetStore()
    rows = store.to_list(store.load(str(path), "train"))
    assert rows == ROWS
    assert row_to_conversation(rows[3], source=str(path), index=3).messages[1].content == "answer 3"


def test_instruction_and_input_output_rows(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "add", "input": "1 2", "response": "3"},
            {"instruction": "say hi", "response": "hi"},
        ],
    )
    store = HFDatasetStore()
    rows = store.to_list(store.load(str(path), "train"))
    assert rows[1] == {"instruction": "say hi", "response": "hi"}  # no null 'input' added
    assert [m.content for m in row_to_conversation(rows[0], source="m", index=0).messages] == [
        "add\n\n1 2",
        "3",
    ]


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field '<json>': not valid JSON"):
        HFDatasetStore().load(str(path))


def test_empty_and_non_utf8_jsonl_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl, field '<file>': has no rows"):
        HFDatasetStore().load(str(empty))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl, line 2, field '<text>': not UTF-8"):
        HFDatasetStore().load(str(latin))


def test_a_bad_row_stops_sft_before_training_naming_the_row(tmp_path: Path) -> None:
    rows = [*ROWS[:5], {"prompt": "no answer here"}, *ROWS[5:]]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    adapters = noop_adapters(datasets=HFDatasetStore())
    with pytest.raises(
        WorkflowError, match=r"train.jsonl\[train\], row 6, field 'completion': missing"
    ) as info:
        run(SFTConfig(dataset=str(path), max_steps=3, run_id="bad"), adapters)
    assert info.value.stage == "load_dataset" and "session" not in info.value.state


def test_sft_runs_on_a_jsonl_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    result = run(
        SFTConfig(dataset=str(path), eval_holdout=4, batch_size=4, run_id="hf"),
        noop_adapters(datasets=HFDatasetStore()),
    )
    # 2 of the 20 rows held out (a tenth), 18 in 5 batches of up to 4, 4 epochs
    assert result.steps == 20 and result.eval[0]["eval/tokens"] > 0
