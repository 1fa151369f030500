"""A request as the passes a session runs: its datums cut into micro-batches, each laid out
in padded rows (``batching.pad_batch``), and the passes' log-probabilities and losses put
back together as one output, in the request's order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs
import jax
import numpy as np

from galley.adapters.jax.batching import PaddedBatch, pad_batch
from galley.adapters.jax.config import ModelConfig
from galley.adapters.jax.sharding import to_host
from galley.core.domain.types import ForwardBackwardInput, ForwardBackwardOutput


@attrs.frozen
class RowLayout:
    """How a session lays datums out in rows: padded to ``length_buckets``, a multiple of
    ``row_multiple`` rows (the devices a batch is split over), with shared heads and
    packing where they are on, and segment ids in every row with ``segments``."""

    length_buckets: tuple[int, ...]
    row_multiple: int
    share_heads: bool
    packing: bool
    segments: bool = False

    def for_model(self, cfg: ModelConfig) -> RowLayout:
        """This layout as ``cfg``'s model needs it. With LongRoPE each sequence's own length
        picks its rope (``rope.long_context``): rows carry segments, and no head is shared
        by sequences that could pick apart. A mixture of experts' routers count real
        tokens, not padding: rows carry segments."""
        if cfg.rope.kind == "longrope":
            return attrs.evolve(self, share_heads=False, segments=True)
        if cfg.moe is not None:
            return attrs.evolve(self, segments=True)
        return self


def request_passes(
    request: ForwardBackwardInput, micro_batch_size: int, layout: RowLayout
) -> list[PaddedBatch]:
    """The padded batches of ``request``'s passes: one, or one per ``micro_batch_size``
    datums (0: one)."""
    size = micro_batch_size or len(request.data)
    if size >= len(request.data):
        parts = [request]  # one pass: the request as it is, checked once
    else:
        loss, config = request.loss_fn, request.loss_fn_config
        parts = [
            ForwardBackwardInput(request.data[i : i + size], loss, config)
            for i in range(0, len(request.data), size)
        ]
    return [
        pad_batch(
            part,
            layout.length_buckets,
            layout.row_multiple,
            share_heads=layout.share_heads,
            packing=layout.packing,
            segments=layout.segments,
        )
        for part in parts
    ]


class PassResult(NamedTuple):
    batch: PaddedBatch
    loss: jax.Array  # a device scalar
    logprobs: jax.Array  # device, [B, T]
    metrics: dict[str, jax.Array]  # the model's own (a router's balance), device scalars


def joined_output(
    request: ForwardBackwardInput, results: Sequence[PassResult]
) -> ForwardBackwardOutput:
    """The passes' results as one output: each datum's log-probabilities, the summed loss, and
    the model's metrics averaged over passes (``name:mean``)."""
    columns: list[np.ndarray[Any, Any]] = [
        to_host(r.logprobs).reshape(-1)[r.batch.gather].astype(np.float32) for r in results
    ]
    metrics = {
        "loss:sum": float(sum(float(r.loss) for r in results)),
        "tokens:sum": float(sum(r.batch.num_tokens for r in results)),
    }
    for name in results[0].metrics if results else ():
        metrics[f"{name}:mean"] = float(np.mean([float(r.metrics[name]) for r in results]))
    return ForwardBackwardOutput.from_columns(
        {"logprobs": np.concatenate(columns)}, request.lengths, metrics
    )
