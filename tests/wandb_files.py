"""Reading an offline W&B run back from its ``run-<id>.wandb`` file, as ``wandb sync`` would.

The file is W&B's record log: a 7-byte header (``:W&B``, a magic number, a version), then
LevelDB-log records in 32 KiB blocks, each a serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7  # each record chunk's: crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, parts = 7, []
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # the rest of the block is padding
            position += left
            continue
        parts.append(data[position + HEADER : position + HEADER + length])
        position += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def offline_run(path: Path) -> dict[str, Any]:
    """The run's id, name, config and history rows (galley's keys, values as numbers)."""
    run: dict[str, Any] = {"history": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["name"] = record.run.run_id, record.run.display_name
            run["started"] = record.run.start_time.ToNanoseconds()
            run["config"] = {_key(u): json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in record.history.item}
            run["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
    return run


def offline_runs(folder: Path) -> list[dict[str, Any]]:
    """Every offline run under ``<folder>/wandb``, oldest first."""
    runs = [offline_run(f) for f in (folder / "wandb").glob("offline-run-*/run-*.wandb")]
    return sorted(runs, key=lambda run: run["started"])


def _key(item: Any) -> str:
    """An item's name: ``key``, or ``nested_key`` (a path; one part for a flat name)."""
    return str(item.key or ".".join(item.nested_key))
