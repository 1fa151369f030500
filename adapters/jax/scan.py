"""Scanning over layers: one layer's program run over every layer's weights, stacked.

Unrolled, a model of L layers compiles L copies of the layer: compile time and program size
grow with depth. Scanned (``JaxTrainingClient(scan_layers=True)``), the layers' weights are
stacked into one layer whose arrays have a leading ``[L]`` axis and ``lax.scan`` runs it, so
the program, and its compile time, stay one layer's.

What leaves a session is per layer whichever way it trains: checkpoints name each layer's
tensors as an unrolled model does (``per_layer``, ``stacked`` convert the names), and the
exports read an unrolled view of the model (``unrolled``), so a checkpoint saved scanned
loads unrolled and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.model import CausalLM

LAYER_ZERO = "['layers'][0]"  # where a stacked layer sits in a scanned model's pytrees


def stack_layers(model: CausalLM) -> CausalLM:
    """``model`` with its layers stacked into one (in place; returned for chaining)."""
    layer, _ = nnx.split(model.layers[0])
    weights = [nnx.split(each)[1] for each in model.layers]
    stacked = jax.tree.map(lambda *arrays: _stack(arrays), *weights)
    model.layers = nnx.List([nnx.merge(layer, stacked)])
    model.scanned = True
    return model


def _stack(arrays: tuple[Any, ...]) -> Any:
    """On the host if they all are there (weights read from files), else on the devices."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.stack(arrays)
    return jnp.stack(arrays)


def unrolled(model: CausalLM) -> CausalLM:
    """``model`` as a list of layers again (a view: the per-layer arrays are slices)."""
    if not model.scanned:
        return model
    layer, stacked = nnx.split(model.layers[0])
    graphdef, state = nnx.split(model)
    view: CausalLM = nnx.merge(graphdef, state)
    view.layers = nnx.List(
        [
            nnx.merge(layer, jax.tree.map(lambda a, i=i: a[i], stacked))
            for i in range(model.cfg.num_layers)
        ]
    )
    view.scanned = False
    return view


def layer_name(name: str, index: int) -> str:
    return name.replace(LAYER_ZERO, f"['layers'][{index}]", 1)


def per_layer(
    named: Mapping[str, np.ndarray[Any, Any]], layers: int
) -> dict[str, np.ndarray[Any, Any]]:
    """A scanned session's named tensors as an unrolled one names them (``layers``: how
    many are stacked; 0, an unrolled session's, names them so already)."""
    if not layers:
        return dict(named)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, array in named.items():
        if LAYER_ZERO in name:
            out |= {layer_name(name, i): array[i] for i in range(layers)}
        else:
            out[name] = array
    return out


def stacked(
    named: Mapping[str, np.ndarray[Any, Any]], template: Any, layers: int
) -> dict[str, np.ndarray[Any, Any]]:
    """Per-layer named tensors as the scanned pytree ``template`` names them; a tensor
    missing here is left for the loader to name."""
    out = dict(named)
    for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = jax.tree_util.keystr(path)
        names = [layer_name(name, i) for i in range(layers)]
        if LAYER_ZERO in name and all(n in named for n in names):
            out[name] = np.stack([named[n] for n in names])
    return out
