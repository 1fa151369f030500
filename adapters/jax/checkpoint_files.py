"""Reading HF model folders: config.json, (sharded) safetensors, tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from galley.adapters.jax.config import ModelConfig, parse_config
from galley.core.errors import NotFoundError, ValidationError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise NotFoundError(f"model folder {str(folder)!r} has no config.json")
    return parse_config(json.loads(path.read_text()), str(path))


class SafetensorsReader:
    """Tensors by HF name across the shards of a model folder (numpy, no torch)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if (folder / INDEX).is_file():
            weight_map: dict[str, str] = json.loads((folder / INDEX).read_text())["weight_map"]
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
        return np.asarray(self._files[shard].get_tensor(name))

    def close(self) -> None:
        self._stack.close()
