"""The JAX kinds, for configs and the CLI. JAX itself is imported only when one is built."""

from __future__ import annotations

from typing import Any

import attrs

from galley.adapters.composition import AdapterKind, Built
from galley.adapters.jax.mesh import Distributed, MeshShape


@attrs.frozen
class JaxTrainingOptions:
    dtype: str = "float32"
    length_buckets: list[int] = attrs.field(
        factory=lambda: [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    )
    compilation_cache_dir: str | None = None  # keep compiled steps here across processes
    mesh: MeshShape = attrs.field(factory=MeshShape)  # {data, fsdp, tensor} device counts
    # One process of several: {coordinator, num_processes, process_id}; {} reads them from
    # the environment (see docs/scaling.md).
    distributed: Distributed | None = None
    scan_layers: bool = False  # one layer's program over stacked weights: compile time flat
    # Several datums a row, each attending only to itself (segment ids); unset: on, except
    # where the fused GPU attention kernel runs (bf16/fp16 on a GPU), which takes no segments.
    packing: bool | None = None
    # What each decoder layer keeps for the backward: "none" (all), "dots" (its matmuls'
    # results), "full" (its input only; the backward runs the layer again).
    remat: str = "none"
    # Positions whose logits are computed at once (0: all): the [positions, vocab] logits
    # never exist whole, forward or backward.
    logits_chunk: int = 0
    # A mixture of experts' load-balancing loss is added to its loss with this weight per
    # token (0: reported as router_balance_loss, not added).
    router_aux_loss_coef: float = 0.0


@attrs.frozen
class JaxCompleterOptions:
    model: str | None = None  # default base model (hub repo id or directory)
    dtype: str = "float32"
    compilation_cache_dir: str | None = None
    max_models: int = 4  # models kept loaded (least recently used dropped)
    mesh: MeshShape = attrs.field(factory=MeshShape)  # {data, fsdp, tensor} device counts


def _training(o: JaxTrainingOptions, built: Built) -> Any:
    from galley.adapters.jax import JaxTrainingClient

    if o.distributed is not None:
        from galley.adapters.jax.distributed import join

        join(o.distributed)

    return JaxTrainingClient(
        built["hub"],
        built["blobs"],
        dtype=o.dtype,
        length_buckets=o.length_buckets,
        compilation_cache_dir=o.compilation_cache_dir,
        mesh=o.mesh,
        scan_layers=o.scan_layers,
        packing=o.packing,
        remat=o.remat,
        logits_chunk=o.logits_chunk,
        router_aux_loss_coef=o.router_aux_loss_coef,
    )


def _completer(o: JaxCompleterOptions, built: Built) -> Any:
    from galley.adapters.jax import JaxCompleter

    return JaxCompleter(
        built["hub"],
        built["blobs"],
        model=o.model,
        dtype=o.dtype,
        compilation_cache_dir=o.compilation_cache_dir,
        max_models=o.max_models,
        mesh=o.mesh,
    )


KINDS = (
    AdapterKind(
        "training",
        "jax",
        "LoRA or full training of HF decoders with JAX (Flax NNX + Optax)",
        JaxTrainingOptions,
        _training,
    ),
    AdapterKind(
        "completer",
        "jax",
        "KV-cache sampling of HF decoders (+ exported adapters) with JAX",
        JaxCompleterOptions,
        _completer,
    ),
)
