"""The JAX adapters: a TrainingClient and a Completer for HF decoder models (Flax NNX + Optax)."""

from galley.adapters.jax.completer import JaxCompleter
from galley.adapters.jax.training import JaxTrainingClient, JaxTrainingSession

__all__ = ["JaxCompleter", "JaxTrainingClient", "JaxTrainingSession"]
