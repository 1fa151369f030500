"""Where arrays live on a device mesh: data parallelism, FSDP and tensor parallelism through
``jax.sharding`` (XLA's SPMD partitioner does the rest).

A mesh has three axes, ``data x fsdp x tensor``. Batches split their rows over ``data`` and
``fsdp``; parameters, and the optimizer state that mirrors them, split by their family's
rules (``families.ShardingRules``) over ``fsdp`` and ``tensor``. With ``fsdp = tensor = 1``
every device holds the whole model: plain data parallelism, galley's default.

In a run of several processes (``jax.distributed``) the mesh spans every process's devices.
Each process then holds the same host values (the workflow is the same everywhere) and puts
on its own devices only their part of each array; results come back whole to every process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from galley.adapters.jax.families import ShardingRules
from galley.adapters.jax.mesh import AXES, MeshShape

BATCH_AXES = ("data", "fsdp")  # a batch's rows split over both


def param_name(path: Sequence[Any]) -> str:
    """A parameter's name in the rules from its path in a pytree: the string keys, without
    the layer list and its indices (``self_attn.q_proj.kernel``). The optimizer's moments
    carry their parameter's path under their own prefix (``mu``, ``nu``), which has no
    string dictionary keys, so they get their parameter's name."""
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return ".".join(k for k in keys if isinstance(k, str) and k != "layers")


class Layout:
    """A mesh and the shardings on it: of a batch, of anything replicated, of each parameter
    by its family's rules."""

    def __init__(self, shape: MeshShape, devices: Sequence[Any] | None = None) -> None:
        available = list(devices if devices is not None else jax.devices())
        sizes = shape.sizes(len(available))  # the first data x fsdp x tensor devices
        grid = np.asarray(available[: int(np.prod(sizes))], dtype=object).reshape(sizes)
        self.shape = shape
        self.mesh = mesh = Mesh(grid, AXES)
        self.replicated = NamedSharding(mesh, PartitionSpec())  # type: ignore[no-untyped-call]
        self.batch = NamedSharding(mesh, PartitionSpec(BATCH_AXES))  # type: ignore[no-untyped-call]
        # A batch's rows are padded to a multiple of this, so each device gets equal rows.
        self.batch_rows = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))

    def spec(
        self, name: str, shape: tuple[int, ...], rules: ShardingRules, *, transposed: bool
    ) -> PartitionSpec:
        """Where parameter ``name`` of ``shape`` splits on this mesh (``split_axes``)."""
        axes = split_axes(name, shape, rules, dict(self.mesh.shape), transposed=transposed)
        return PartitionSpec(*axes)  # type: ignore[no-untyped-call]

    def shardings(self, tree: Any, rules: ShardingRules, *, transposed: bool = False) -> Any:
        """A sharding for every array of ``tree`` (parameters, or optimizer state)."""
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: NamedSharding(
                self.mesh,
                self.spec(param_name(path), np.shape(leaf), rules, transposed=transposed),
            ),
            tree,
        )

    def place(self, tree: Any, rules: ShardingRules, *, transposed: bool = False) -> Any:
        """``tree`` on the mesh, each array split as the rules say."""
        return self.put(tree, self.shardings(tree, rules, transposed=transposed))

    def put(self, tree: Any, shardings: Any) -> Any:
        """``tree`` (host or device arrays) with ``shardings``. Across processes each puts
        only its devices' parts, cut from its own copy of the value."""
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)

        def local_parts(value: Any, sharding: NamedSharding) -> jax.Array:
            host = to_host(value) if isinstance(value, jax.Array) else np.asarray(value)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(local_parts, tree, shardings)

    def batch_arrays(self, arrays: dict[str, np.ndarray[Any, Any]]) -> dict[str, jax.Array]:
        """A padded batch's arrays, rows split over ``data x fsdp``."""
        return {k: self.put(v, self.batch) for k, v in arrays.items()}


def to_host(array: jax.Array) -> np.ndarray[Any, Any]:
    """The whole of ``array`` on the host, in every process (an all-gather across processes
    when it is split over several)."""
    if array.is_fully_addressable or array.is_fully_replicated:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class Pinned:
    """A pytree's shardings as a hashable value, to pass a compiled step as a static
    argument: the step pins its outputs where its inputs live. Left to choose, XLA puts an
    array computed from no input (zeroed gradients) whole on every device."""

    def __init__(self, tree: Any) -> None:
        self._shardings = tree
        leaves, treedef = jax.tree.flatten(tree)
        self._key = (tuple(leaves), treedef)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pinned) and self._key == other._key

    def __call__(self, tree: Any) -> Any:
        """``tree`` (inside a compiled step) constrained to these shardings."""
        return jax.lax.with_sharding_constraint(tree, self._shardings)  # type: ignore[no-untyped-call]


# What one dimension splits over: a mesh axis, several (their product), or none.
Split = str | tuple[str, ...] | None


def split_axes(
    name: str,
    shape: tuple[int, ...],
    rules: ShardingRules,
    sizes: Mapping[str, int],
    *,
    transposed: bool = False,
) -> tuple[Split, ...]:
    """What each dimension of parameter ``name`` splits over, on a mesh of ``sizes``.
    ``transposed``: kernels are stored ``[out, in]`` (the sampling layout). Axes that do not
    divide a dimension are left out of it (a small model on a large mesh); the dimensions of
    what the rules do not name stay whole."""
    axes = _axes(name, dict(rules))
    if axes is not None and len(shape) == len(axes) + 1:  # stacked layers (scan.py)
        axes = (None, *axes)
    if axes is None or len(axes) != len(shape):
        return (None,) * len(shape)
    if transposed and name.endswith(".kernel"):
        axes = axes[::-1]
    return tuple(_dividing(split, size, sizes) for split, size in zip(axes, shape, strict=True))


def split_count(split: Split, sizes: Mapping[str, int]) -> int:
    """Into how many parts ``split`` cuts a dimension."""
    names = (split,) if isinstance(split, str) else split or ()
    return int(np.prod([sizes.get(a, 1) for a in names]))


def _dividing(split: Split, size: int, sizes: Mapping[str, int]) -> Split:
    """``split`` less the axes that would not divide ``size``, taken in order."""
    kept: list[str] = []
    for name in (split,) if isinstance(split, str) else split or ():
        if size % split_count((*kept, name), sizes) == 0:
            kept.append(name)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else tuple(kept)


def _axes(name: str, rules: dict[str, tuple[str | None, ...]]) -> tuple[Split, ...] | None:
    """The rule for ``name``. A LoRA factor's wide dimension splits over both of its
    kernel's axes, the kernel's own for that dimension first: under tensor parallelism it
    lines up with the kernel, under FSDP every factor, and its Adam moments, are split."""
    if name in rules:
        return rules[name]
    module, _, part = name.rpartition(".")
    kernel = rules.get(f"{module}.kernel")
    if kernel is None or part not in ("lora_a", "lora_b"):
        return None
    first, second = (kernel[0], kernel[1]) if part == "lora_a" else (kernel[1], kernel[0])
    both = tuple(a for a in (first, second) if a is not None)
    wide = both[0] if len(both) == 1 else (both or None)
    return (wide, None) if part == "lora_a" else (None, wide)


def sync_processes(name: str) -> None:
    """Wait until every process of the run gets here (nothing to wait for in one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
