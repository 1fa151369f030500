"""Host-side batch assembly: Datums -> padded arrays in a few fixed shapes (buckets), so new
sequence lengths reuse compiled steps instead of recompiling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import jax.numpy as jnp
import numpy as np

from galley.core.errors import ConfigError
from galley.core.types import ForwardBackwardInput

DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DTYPES = ("float32", "bfloat16", "float16")  # what a model's weights and activations may be


def checked_buckets(buckets: Sequence[int], where: str) -> tuple[int, ...]:
    """Length buckets as a sorted tuple; empty, non-integer or non-positive ones are refused."""
    values = tuple(buckets) if not isinstance(buckets, str | bytes) else ()
    if not values or any(type(b) is not int or b < 1 for b in values):
        raise ConfigError(f"{where}: expected positive integer lengths, got {buckets!r:.80}")
    return tuple(sorted(set(values)))


def checked_dtype(dtype: str, where: str) -> Any:
    if dtype not in DTYPES:
        raise ConfigError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return jnp.dtype(dtype)


def bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(2 ** np.ceil(np.log2(n)))


def batch_bucket(n: int, multiple: int) -> int:
    """Batch rows padded to a power of two that the device count divides."""
    size = max(1, int(2 ** np.ceil(np.log2(max(n, 1)))))
    return int(np.ceil(size / multiple) * multiple)


PADDED_DTYPES = {
    "tokens": np.int32,
    "targets": np.int32,
    "weights": np.float32,
    "sampler_logprobs": np.float32,
    "advantages": np.float32,
}
# Padded array, loss input, and its value for a datum without it.
INPUT_COLUMNS = (
    ("weights", "weights", 1.0),
    ("sampler_logprobs", "logprobs", 0.0),
    ("advantages", "advantages", 0.0),
)


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
    """Datum i's tokens and loss inputs fill row i from column 0; a datum without weights
    weighs 1, one without sampler logprobs or advantages has zeros."""
    lengths = request.lengths
    rows, width = batch_bucket(len(lengths), row_multiple), bucket(max(lengths), length_buckets)
    arrays = {name: np.zeros((rows, width), dtype) for name, dtype in PADDED_DTYPES.items()}
    for i, (datum, n) in enumerate(zip(request.data, lengths, strict=True)):
        inputs = datum.loss_fn_inputs
        arrays["tokens"][i, :n] = datum.model_input.token_array
        arrays["targets"][i, :n] = inputs["target_tokens"].data
        for name, key, fill in INPUT_COLUMNS:
            tensor = inputs.get(key)
            arrays[name][i, :n] = tensor.data if tensor is not None else fill
    return PaddedBatch(lengths=lengths, **arrays)
