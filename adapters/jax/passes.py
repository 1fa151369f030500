"""A request as the passes a session runs: its datums cut into micro-batches, each laid out
in padded rows (``batching.pad_batch``), and the passes' log-probabilities and losses put
back together as one output, in the request's order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import jax
import numpy as np

from galley.adapters.jax.batching import PaddedBatch, pad_batch
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


# One pass's batch, its loss (a device scalar) and its log-probabilities (device, [B, T]).
PassResult = tuple[PaddedBatch, jax.Array, jax.Array]


def joined_output(
    request: ForwardBackwardInput, results: Sequence[PassResult]
) -> ForwardBackwardOutput:
    """The passes' results as one output: each datum's log-probabilities, the summed loss."""
    columns: list[np.ndarray[Any, Any]] = [
        to_host(logp).reshape(-1)[batch.gather].astype(np.float32) for batch, _, logp in results
    ]
    return ForwardBackwardOutput.from_columns(
        {"logprobs": np.concatenate(columns)},
        request.lengths,
        {
            "loss:sum": float(sum(float(value) for _, value, _ in results)),
            "tokens:sum": float(sum(batch.num_tokens for batch, _, _ in results)),
        },
    )
