"""A session's state (trainable weights, optimizer state, gradients) as checkpoint files, in
one process or several.

One process writes ``state.safetensors``, every tensor whole. In a run of several processes
no process holds every tensor, so each writes the parts its devices hold,
``state-<i>-of-<n>.safetensors``, each part once (replica 0 of it), with where it sits in its
tensor in the file's metadata; process 0 then writes the manifest listing every file, with
sizes and SHA-256 gathered from the others. Loading reads either form back into whole host
tensors, so a checkpoint loads on any mesh and any number of processes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from galley.adapters.jax.scan import LAYER_ZERO, layer_name
from galley.core.runs.manifest import BlobDigest, CorruptCheckpointError

STATE_FILE = "state.safetensors"
SLICES_KEY = "galley.slices"  # safetensors metadata: each part's tensor and place in it


def flat_named(tree: Any) -> dict[str, np.ndarray[Any, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def part_file(process: int, count: int) -> str:
    return f"state-{process:05d}-of-{count:05d}.safetensors"


def local_parts(tree: Any, layers: int = 0) -> bytes:
    """The parts of ``tree``'s arrays this process writes: those of its devices that are
    replica 0 of their part, so across processes each part is written once. ``layers``: the
    tree is a scanned model's, its stacked arrays written per layer (``scan.per_layer``)."""
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    slices: dict[str, dict[str, Any]] = {}

    def add(name: str, shape: list[int], bounds: list[list[int]], data: Any) -> None:
        key = f"{len(slices)}"
        tensors[key] = np.asarray(data)
        slices[key] = {"name": name, "shape": shape, "bounds": bounds}

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        for shard in leaf.addressable_shards:
            if shard.replica_id != 0:
                continue
            bounds = [
                [cut.start or 0, size if cut.stop is None else cut.stop]
                for cut, size in zip(shard.index, leaf.shape, strict=True)
            ]
            if layers and LAYER_ZERO in name:  # the layer axis is never split
                for i in range(layers):
                    add(layer_name(name, i), list(leaf.shape[1:]), bounds[1:], shard.data[i])
            else:
                add(name, list(leaf.shape), bounds, shard.data)
    return save_safetensors(tensors, metadata={SLICES_KEY: json.dumps(slices)})


def gathered_digests(data: bytes) -> list[BlobDigest]:
    """Every process's file digest, in process order (an all-gather: every process calls
    it, after writing its file)."""
    from jax.experimental import multihost_utils

    mine = np.frombuffer(
        hashlib.sha256(data).digest() + struct.pack("<Q", len(data)), dtype=np.uint8
    )
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 40)
    return [
        BlobDigest(int(struct.unpack("<Q", row[32:].tobytes())[0]), row[:32].tobytes().hex())
        for row in every
    ]


def _metadata(data: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + length])
    return dict(header.get("__metadata__") or {})


def whole_tensors(files: dict[str, bytes], source: str) -> dict[str, np.ndarray[Any, Any]]:
    """The state's tensors, whole, from either form of files. Parts that do not cover a
    tensor exactly once are a CorruptCheckpointError naming it."""
    if STATE_FILE in files:
        return dict(load_safetensors(files[STATE_FILE]))
    whole: dict[str, np.ndarray[Any, Any]] = {}
    covered: dict[str, int] = {}
    for filename in sorted(f for f in files if f.startswith("state-")):
        slices = json.loads(_metadata(files[filename]).get(SLICES_KEY, "{}"))
        for key, part in load_safetensors(files[filename]).items():
            where = slices[key]
            name = where["name"]
            target = whole.setdefault(name, np.zeros(where["shape"], part.dtype))
            target[tuple(slice(a, b) for a, b in where["bounds"])] = part
            covered[name] = covered.get(name, 0) + part.size
    for name, tensor in whole.items():
        if covered[name] != tensor.size:
            raise CorruptCheckpointError(
                f"{source}: the parts of tensor {name!r} cover {covered[name]} of its "
                f"{tensor.size} values"
            )
    return whole


def has_state(files: dict[str, bytes]) -> bool:
    return STATE_FILE in files or any(f.startswith("state-") for f in files)
