"""A DatasetStore over Hugging Face ``datasets``: local JSONL/JSON/CSV/Parquet files, folders
written by ``save_to_disk``, and Hub dataset ids. Verbs run on Arrow (index mappings), so
nothing is copied into Python until ``to_list``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import datasets

from galley.core.errors import DataError, NotFoundError, ValidationError

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

datasets.disable_progress_bars()


@attrs.frozen
class HFDatasetHandle:
    source: str
    data: datasets.DatasetDict | datasets.Dataset

    @property
    def table(self) -> datasets.Dataset:
        if isinstance(self.data, datasets.DatasetDict):
            raise ValidationError("dataset", f"{self.source!r}: choose a split first (get_split)")
        return self.data


def _check_jsonl(path: Path) -> None:
    """Refuse a JSONL file that is empty, not UTF-8, or has a line that is not a JSON object,
    naming the line as an editor numbers it."""
    rows = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(where, None, "<text>", f"not UTF-8 (byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    where, None, "<json>", f"not valid JSON: {e.msg} at column {e.colno}"
                ) from None
            if not isinstance(value, dict):
                raise DataError(
                    where, None, "<row>", f"expected a JSON object, got {type(value).__name__}"
                )
            rows += 1
    if not rows:
        raise DataError(str(path), None, "<file>", "has no rows (the file is empty)")


def _load_file(path: Path) -> datasets.DatasetDict:
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValidationError(
            "dataset", f"{str(path)!r}: unknown file type; expected {', '.join(BUILDERS)}"
        )
    if path.suffix.lower() == ".jsonl":
        _check_jsonl(path)
    try:
        return datasets.load_dataset(builder, data_files={"train": str(path)})
    except Exception as e:  # datasets wraps parse and schema errors in many types
        raise DataError(str(path), None, "<file>", f"could not be read as {builder}: {e}") from e


class HFDatasetStore:
    """Sources: a data file (its rows are the ``train`` split), a ``save_to_disk`` folder, a
    folder of data files, or a Hub dataset id (needs the network or the HF cache)."""

    def __init__(
        self, cache_dir: str | None = None, *, local_root: str | Path | None = None
    ) -> None:
        self.cache_dir = cache_dir
        self.local_root = Path(local_root) if local_root is not None else None

    def _local(self, source: str) -> Path:
        """A file or folder; ids like 'org/name' are looked up under ``local_root`` first."""
        if self.local_root is not None and "/" in source and ".." not in source.split("/"):
            shipped = self.local_root / source
            if shipped.exists():
                return shipped
        return Path(source).expanduser()

    def load(self, source: str, split: str | None = None) -> HFDatasetHandle:
        path = self._local(source)
        if path.is_file():
            data: Any = _load_file(path)
        elif path.is_dir() and (
            (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()
        ):
            data = datasets.load_from_disk(str(path))
        elif path.is_dir():
            data = datasets.load_dataset(str(path), cache_dir=self.cache_dir)
        else:
            try:
                data = datasets.load_dataset(source, cache_dir=self.cache_dir)
            except Exception as e:
                raise NotFoundError(
                    f"dataset {source!r} is not a local file or folder "
                    f"and could not be loaded from the Hub: {e}"
                ) from e
        if isinstance(data, datasets.Dataset):
            data = datasets.DatasetDict({"train": data})
        handle = HFDatasetHandle(source, data)
        return handle if split is None else self.get_split(handle, split)

    def get_split(self, handle: HFDatasetHandle, split: str) -> HFDatasetHandle:
        if not isinstance(handle.data, datasets.DatasetDict) or split not in handle.data:
            raise NotFoundError(
                f"dataset {handle.source!r} has no split {split!r}; "
                f"it has {', '.join(self.splits(handle))}"
            )
        return HFDatasetHandle(handle.source, handle.data[split])

    def splits(self, handle: HFDatasetHandle) -> list[str]:
        return list(handle.data) if isinstance(handle.data, datasets.DatasetDict) else []

    def num_rows(self, handle: HFDatasetHandle) -> int:
        return int(handle.table.num_rows)

    def shuffle(self, handle: HFDatasetHandle, seed: int) -> HFDatasetHandle:
        return HFDatasetHandle(handle.source, handle.table.shuffle(seed=seed))

    def take(self, handle: HFDatasetHandle, n: int) -> HFDatasetHandle:
        table = handle.table
        return HFDatasetHandle(handle.source, table.select(range(min(max(n, 0), table.num_rows))))

    def skip(self, handle: HFDatasetHandle, n: int) -> HFDatasetHandle:
        table = handle.table
        return HFDatasetHandle(
            handle.source, table.select(range(min(max(n, 0), table.num_rows), table.num_rows))
        )

    def select(self, handle: HFDatasetHandle, indices: Sequence[int]) -> HFDatasetHandle:
        table = handle.table
        rows = table.num_rows
        for i in indices:
            if not -rows <= i < rows:
                raise ValidationError("indices", f"index {i} is out of range for {rows} rows")
        return HFDatasetHandle(handle.source, table.select([i % rows for i in indices]))

    def to_list(self, handle: HFDatasetHandle) -> list[dict[str, Any]]:
        return [_without_nulls(row) for row in handle.table.to_list()]


def _without_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """Arrow fills fields a row lacks with None; drop them so rows look as they were written."""
    return {k: v for k, v in row.items() if v is not None}
