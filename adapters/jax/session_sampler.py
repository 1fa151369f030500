"""Sampling from a training session's weights as they are at one moment, without a disk
round trip (Tinker's ``save_weights_and_get_sampling_client``).

The session's model is rebuilt in the completer's sampling layout on the session's mesh,
from its own arrays: the kernels a LoRA adapts are merged anew (W + A B alpha/r), the rest
are shared, not copied; a sharded model stays sharded, never gathered onto one device. A
completer holds its merged kernels until it is dropped, so handing weights over thousands of
times keeps one set per completer still referenced (an RL loop keeps one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from flax import nnx

from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.adapters.jax.build import build_model
from galley.adapters.jax.completer import JaxCompleter, LoadedModel
from galley.adapters.jax.config import ModelConfig
from galley.adapters.jax.model import CausalLM
from galley.adapters.jax.peft_export import merged_weights
from galley.adapters.jax.sharding import Layout
from galley.core.domain.types import ModelRef
from galley.core.errors import ValidationError
from galley.ports.blobs import BlobStore
from galley.ports.hub import HubClient


def sampling_copy(
    model: CausalLM,
    config: ModelConfig,
    tokenizer: HFTokenizerAdapter,
    dtype: Any,
    layout: Layout,
) -> LoadedModel:
    """The model's current weights (LoRA merged in) as a model to sample from."""
    tensors = merged_weights(model)
    # A LoRA on a tied head unties it: the merged head differs from the embedding.
    tied = config.family.names.weight("lm_head") not in tensors
    config = attrs.evolve(config, tie_word_embeddings=tied)
    sampler = build_model(config, tensors.__getitem__, None, dtype, sampling_layout=True)
    graphdef, state = nnx.split(sampler)
    state = layout.place(state, config.family.sharding, transposed=True)
    return LoadedModel(graphdef, state, config, tokenizer)


class WeightsCompleter(JaxCompleter):
    """A Completer bound to one set of weights: ``model=`` must be left out (it samples only
    what it was made from)."""

    def __init__(
        self,
        loaded: LoadedModel,
        hub: HubClient,
        blobs: BlobStore,
        *,
        dtype: str,
        length_buckets: Sequence[int],
        layout: Layout,
    ) -> None:
        super().__init__(hub, blobs, dtype=dtype, length_buckets=length_buckets)
        self.layout = layout
        self._loaded = loaded

    def _load(self, ref: ModelRef | None) -> LoadedModel:
        if ref is not None:
            raise ValidationError(
                "model",
                "this completer samples the training weights it was made from; "
                "leave model out (or use a JaxCompleter for other models)",
            )
        return self._loaded
