"""Hugging Face model folders: finding one (a local directory, or a repo through the
HubClient), and reading its JSON files and (sharded) safetensors weights with numpy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from galley.core.errors import NotFoundError, ValidationError
from galley.ports.hub import HubClient

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# What a model needs from a hub repo: configs, weights, tokenizer files.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model"]


def resolve_model_folder(base_model: str, hub: HubClient) -> Path:
    """A local directory as is; otherwise a hub repo id, fetched through the HubClient."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        return path
    return hub.snapshot(base_model, allow_patterns=MODEL_FILES)


def read_json(path: Path) -> Any:
    """A JSON file of a model folder; unreadable or malformed ones are named."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationError(str(path), f"is not a readable JSON file: {e}") from None


def _weight_map(folder: Path) -> dict[str, str]:
    """The index's tensor -> shard map; every shard must be a file in ``folder`` itself."""
    path = folder / INDEX
    weight_map = read_json(path)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict):
        raise ValidationError(str(path), "has no 'weight_map' object")
    for name, shard in weight_map.items():
        inside = isinstance(shard, str) and Path(shard).name == shard and shard not in {"", ".."}
        if not inside:
            raise ValidationError(
                f"{path} weight_map[{name!r}]",
                f"{shard!r} is not a file name in the model folder; refusing to open it",
            )
    return weight_map


class SafetensorsReader:
    """Tensors by HF name across the shards of a model folder (numpy, no torch). With
    ``shapes`` (``expected_shapes(config)``), every tensor read is checked against its shape
    there and for NaN/Inf values, naming the file and the tensor."""

    def __init__(self, folder: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.folder = folder
        self.shapes = shapes or {}
        if (folder / INDEX).is_file():
            weight_map = _weight_map(folder)
        elif (folder / SINGLE).is_file():
            weight_map = {}
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
            if not files:
                raise NotFoundError(f"model folder {str(folder)!r} has no *.safetensors weights")
            weight_map = {}
        self._stack = ExitStack()
        shards = sorted(set(weight_map.values())) or [
            p.name for p in sorted(folder.glob("*.safetensors"))
        ]
        self._files = {}
        for name in shards:
            try:
                self._files[name] = self._stack.enter_context(safe_open(str(folder / name), "np"))
            except Exception as e:  # safetensors raises its own error types for bad files
                self._stack.close()
                raise ValidationError(
                    f"{folder.name}/{name}", f"is not a readable safetensors file: {e}"
                ) from None
        self._where = dict(weight_map)
        for name, handle in self._files.items():
            for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                self._where.setdefault(key, name)

    def names(self) -> Iterator[str]:
        return iter(self._where)

    def __call__(self, name: str) -> np.ndarray[Any, Any]:
        shard = self._where.get(name)
        if shard is None:
            raise ValidationError(
                f"{self.folder.name} weights",
                f"missing tensor {name!r} (the checkpoint does not match its config)",
            )
        tensor = np.asarray(self._files[shard].get_tensor(name))
        where = f"{self.folder.name}/{shard} tensor {name!r}"
        expected = self.shapes.get(name)
        if expected is not None and tensor.shape != expected:
            raise ValidationError(
                where, f"has shape {tensor.shape}; its config.json implies {expected}"
            )
        if tensor.dtype.kind == "f" or tensor.dtype.name == "bfloat16":
            finite = np.isfinite(tensor.astype(np.float32, copy=False))
            if not finite.all():
                raise ValidationError(
                    where, f"has {int(finite.size - finite.sum())} NaN or infinite values"
                )
        return tensor

    def close(self) -> None:
        self._stack.close()
