"""One copy in memory of a base model's frozen weights, however many sessions train on it."""

from __future__ import annotations

from typing import Any

import jax


class SharedBase:
    """The frozen arrays of one base model, by their path in the model; alive while a session
    holds it."""

    def __init__(self) -> None:
        self.arrays: dict[str, jax.Array] = {}

    def adopt(self, frozen: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(frozen)
        shared = []
        for path, leaf in leaves:
            name = jax.tree_util.keystr(path)
            held = self.arrays.get(name)
            same = (
                isinstance(leaf, jax.Array)
                and held is not None
                and (held.shape, held.dtype, held.sharding)
                == (leaf.shape, leaf.dtype, leaf.sharding)
            )
            if same:
                shared.append(held)
            else:
                if isinstance(leaf, jax.Array):
                    self.arrays.setdefault(name, leaf)
                shared.append(leaf)
        return jax.tree_util.tree_unflatten(treedef, shared)
