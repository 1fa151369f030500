"""Host-side batch assembly: Datums -> padded arrays in a few fixed shapes (buckets), so new
sequence lengths reuse compiled steps instead of recompiling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from galley.core.types import ForwardBackwardInput

DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(2 ** np.ceil(np.log2(n)))


def batch_bucket(n: int, multiple: int) -> int:
    """Batch rows padded to a power of two that the device count divides."""
    size = max(1, int(2 ** np.ceil(np.log2(max(n, 1)))))
    return int(np.ceil(size / multiple) * multiple)


@attrs.frozen
class PaddedBatch:
    tokens: np.ndarray[Any, Any]  # int32 [B, T]
    targets: np.ndarray[Any, Any]  # int32 [B, T]
    weights: np.ndarray[Any, Any]  # float32 [B, T]
    sampler_logprobs: np.ndarray[Any, Any]  # float32 [B, T]
    advantages: np.ndarray[Any, Any]  # float32 [B, T]
    lengths: tuple[int, ...]  # real lengths, one per datum

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


def pad_batch(
    request: ForwardBackwardInput, length_buckets: Sequence[int], row_multiple: int
) -> PaddedBatch:
    lengths = tuple(d.model_input.length for d in request.data)
    rows, width = batch_bucket(len(lengths), row_multiple), bucket(max(lengths), length_buckets)
    arrays = {
        "tokens": np.zeros((rows, width), np.int32),
        "targets": np.zeros((rows, width), np.int32),
        "weights": np.zeros((rows, width), np.float32),
        "sampler_logprobs": np.zeros((rows, width), np.float32),
        "advantages": np.zeros((rows, width), np.float32),
    }
    for i, (datum, n) in enumerate(zip(request.data, lengths, strict=True)):
        inputs = datum.loss_fn_inputs
        arrays["tokens"][i, :n] = datum.model_input.token_array
        arrays["targets"][i, :n] = inputs["target_tokens"].data
        arrays["weights"][i, :n] = inputs["weights"].data if "weights" in inputs else 1.0
        if "logprobs" in inputs:
            arrays["sampler_logprobs"][i, :n] = inputs["logprobs"].data
        if "advantages" in inputs:
            arrays["advantages"][i, :n] = inputs["advantages"].data
    return PaddedBatch(lengths=lengths, **arrays)
