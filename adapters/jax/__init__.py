"""The JAX adapters: a TrainingClient (Flax NNX + Optax) and a Completer (KV-cache sampling)
for Hugging Face decoders. Importing this package imports no JAX: the classes load when first
named, so listing adapter kinds (``kinds.py``) stays cheap."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from galley.adapters.jax.completer import JaxCompleter
    from galley.adapters.jax.training import JaxTrainingClient, JaxTrainingSession

_WHERE = {
    "JaxCompleter": "galley.adapters.jax.completer",
    "JaxTrainingClient": "galley.adapters.jax.training",
    "JaxTrainingSession": "galley.adapters.jax.training",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = ["JaxCompleter", "JaxTrainingClient", "JaxTrainingSession"]
