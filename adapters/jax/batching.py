"""Host-side batch assembly: Datums -> padded arrays in a few fixed shapes (buckets), so new
sequence lengths reuse compiled steps instead of recompiling.

Two layouts put several datums in one row, each attending only to itself, at positions that
restart from 0, so each datum's logprobs (and loss, and gradient) are those it would get in
a row of its own:

- Datums that open with the same tokens carrying no loss (an RL group's prompt, a preference
  pair's prompt) share one row: the head once, then each datum's tail, every tail attending
  to the head and to itself. The head is computed once instead of once per datum.
- Packing: datums of mixed lengths are placed best-fit-decreasing into rows of one width, so
  a batch of short and long datums is not padded to its longest.

Either is used only where it cuts the padded size by a quarter at least."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import jax.numpy as jnp
import numpy as np

from galley.core.domain.losses import LossFn
from galley.core.domain.types import Datum, ForwardBackwardInput
from galley.core.errors import ConfigError

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


def joint_bucket(n: int, multiple: int) -> int:
    """Rows of several datums padded to a power of two or three times one (3, 6, 12...),
    that the device count divides: a packed row is long, so a padded one costs more than a
    few more compiled shapes do."""
    three = 3 * batch_bucket(-(-n // 3), 1)
    return min(batch_bucket(n, multiple), int(np.ceil(three / multiple) * multiple))


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
    gather: np.ndarray[Any, Any]  # int [sum(lengths)]: datums' positions in [B·T], end to end
    # Rows of several datums only: each position's place in its datum, and its segment (0 a
    # shared head, k the row's k-th datum or tail, -1 padding).
    positions: np.ndarray[Any, Any] | None = None  # int32 [B, T]
    segments: np.ndarray[Any, Any] | None = None  # int32 [B, T]

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        """What the device step reads (segments and positions only for rows of several)."""
        names = [*PADDED_DTYPES] + (["positions", "segments"] if self.segments is not None else [])
        return {name: getattr(self, name) for name in names}


MIN_SHARED_HEAD = 8  # shorter common heads save less than the masked attention costs
MAX_ROW_FACTOR = 4  # a shared or packed row holds at most this many times the longest datum


def pad_batch(
    request: ForwardBackwardInput,
    length_buckets: Sequence[int],
    row_multiple: int,
    *,
    share_heads: bool = True,
    packing: bool = False,
    segments: bool = False,
) -> PaddedBatch:
    """Datum i's tokens and loss inputs fill row i from column 0, or, where it cuts the
    padded size by a quarter at least, rows of several datums (shared heads with
    ``share_heads``, the other datums packed with ``packing``); a datum without weights
    weighs 1, one without sampler logprobs or advantages has zeros. With ``segments``, rows
    of one datum carry segment ids and positions too (for models that read each sequence's
    extent: LongRoPE)."""
    columns = [_columns(datum) for datum in request.data]
    lengths = request.lengths
    rows, width = batch_bucket(len(lengths), row_multiple), bucket(max(lengths), length_buckets)
    singles: list[SharedRow] = [(0, [i]) for i in range(len(lengths))]
    layout = singles
    if share_heads:
        # Cross-entropy scales each position's term by its weight, the others by its advantage.
        scale = "weights" if request.loss_fn is LossFn.CROSS_ENTROPY else "advantages"
        layout = _shared_layout(columns, lengths, scale)
    if packing:
        layout, joint_width = _packed(layout, lengths, length_buckets, row_multiple)
    else:
        joint_width = bucket(max(_row_length(row, lengths) for row in layout), length_buckets)
    joint_rows = joint_bucket(len(layout), row_multiple)
    if len(layout) < len(lengths) and 4 * joint_rows * joint_width <= 3 * rows * width:
        return _shared_batch(columns, lengths, layout, joint_rows, joint_width)
    if segments:
        return _shared_batch(columns, lengths, singles, rows, width)
    arrays = {name: np.zeros((rows, width), dtype) for name, dtype in PADDED_DTYPES.items()}
    for i, (datum, n) in enumerate(zip(columns, lengths, strict=True)):
        for name in PADDED_DTYPES:
            arrays[name][i, :n] = datum[name]
    gather = np.flatnonzero(np.arange(width) < np.asarray(lengths)[:, None])
    return PaddedBatch(lengths=lengths, gather=gather, **arrays)


# A datum's padded columns: its values, or the one value a datum without the input has.
Columns = dict[str, "np.ndarray[Any, Any] | float"]


def _columns(datum: Datum) -> Columns:
    inputs = datum.loss_fn_inputs
    out: Columns = {
        "tokens": datum.model_input.token_array,
        "targets": inputs["target_tokens"].data,
    }
    for name, key, fill in INPUT_COLUMNS:
        tensor = inputs.get(key)
        out[name] = tensor.data if tensor is not None else fill
    return out


# A shared row: (head length, the datums whose tails follow it, in order).
SharedRow = tuple[int, list[int]]


def _head(datum: Columns, scale: str, n: int) -> int:
    """How many of its ``n`` leading positions add nothing to the loss: ``scale`` (the column
    that multiplies each position's term) is 0 there."""
    values = datum[scale]
    if isinstance(values, float):
        return 0 if values else n
    carries = np.flatnonzero(values)
    return int(carries[0]) if len(carries) else n


def _part(values: np.ndarray[Any, Any] | float, start: int, end: int | None) -> Any:
    return values if isinstance(values, float) else values[start:end]


def _leading(values: np.ndarray[Any, Any] | float, h: int) -> bytes:
    return repr(values).encode() if isinstance(values, float) else values[:h].tobytes()


def _shared_layout(columns: list[Columns], lengths: tuple[int, ...], scale: str) -> list[SharedRow]:
    """Datums grouped by identical heads (tokens, targets and sampler logprobs), a group's
    tails split over rows of at most MAX_ROW_FACTOR x the longest datum; datums with short
    heads, or heads of their own, get rows of their own."""
    groups: dict[bytes, SharedRow] = {}
    singles: list[SharedRow] = []
    for i, datum in enumerate(columns):
        h = _head(datum, scale, lengths[i])
        if h < MIN_SHARED_HEAD:
            singles.append((0, [i]))
            continue
        key = b"".join(
            _leading(datum[name], h) for name in ("tokens", "targets", "sampler_logprobs")
        )
        groups.setdefault(key, (h, []))[1].append(i)
    cap = MAX_ROW_FACTOR * max(lengths)
    layout: list[SharedRow] = []
    for h, members in groups.values():
        if len(members) == 1:  # a head no other datum has: nothing to share
            singles.append((0, members))
            continue
        row: list[int] = []
        for i in members:
            if row and _row_length((h, [*row, i]), lengths) > cap:
                layout.append((h, row))
                row = []
            row.append(i)
        layout.append((h, row))
    return layout + singles


def _packed(
    layout: list[SharedRow], lengths: tuple[int, ...], buckets: Sequence[int], row_multiple: int
) -> tuple[list[SharedRow], int]:
    """``layout`` with its one-datum rows packed best-fit-decreasing into rows of one width:
    of the bucket widths from the longest row's up to MAX_ROW_FACTOR times it, the one whose
    rows x width is least (the narrower on a tie: attention grows with the width)."""
    singles = sorted(
        (members[0] for head, members in layout if not head and len(members) == 1),
        key=lambda i: -lengths[i],
    )
    kept = [row for row in layout if row[0] or len(row[1]) > 1]
    narrowest = bucket(max(_row_length(row, lengths) for row in layout), buckets)
    widths = [narrowest, *(b for b in buckets if narrowest < b <= MAX_ROW_FACTOR * narrowest)]
    best: tuple[int, int, list[SharedRow]] | None = None
    for width in widths:
        rows = kept + [(0, members) for members in _best_fit(singles, lengths, width)]
        size = joint_bucket(len(rows), row_multiple) * width
        if best is None or size < best[0]:
            best = (size, width, rows)
    assert best is not None
    return best[2], best[1]


def _best_fit(order: Sequence[int], lengths: Sequence[int], width: int) -> list[list[int]]:
    """Datums ``order`` (longest first) into rows of ``width``: each into the fullest row it
    fits in, or a new one."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        fits = [r for r, room in enumerate(free) if room >= lengths[i]]
        if fits:
            r = min(fits, key=free.__getitem__)
            rows[r].append(i)
            free[r] -= lengths[i]
        else:
            rows.append([i])
            free.append(width - lengths[i])
    return rows


def _row_length(row: SharedRow, lengths: Sequence[int]) -> int:
    head, members = row
    return head + sum(lengths[i] - head for i in members)


def _shared_batch(
    columns: list[Columns],
    lengths: tuple[int, ...],
    layout: list[SharedRow],
    rows: int,
    width: int,
) -> PaddedBatch:
    arrays = {name: np.zeros((rows, width), dtype) for name, dtype in PADDED_DTYPES.items()}
    positions = np.zeros((rows, width), np.int32)
    segments = np.full((rows, width), -1, np.int32)
    spans: list[np.ndarray[Any, Any]] = [np.empty(0, np.int64)] * len(lengths)
    for r, (head, members) in enumerate(layout):
        first = columns[members[0]]
        for name in PADDED_DTYPES:
            arrays[name][r, :head] = _part(first[name], 0, head)
        positions[r, :head], segments[r, :head] = np.arange(head), 0
        start = head
        for k, i in enumerate(members, 1):
            end = start + lengths[i] - head
            for name in PADDED_DTYPES:
                arrays[name][r, start:end] = _part(columns[i][name], head, None)
            positions[r, start:end], segments[r, start:end] = np.arange(head, lengths[i]), k
            spans[i] = r * width + np.r_[0:head, start:end]
            start = end
    return PaddedBatch(
        lengths=lengths,
        gather=np.concatenate(spans),
        positions=positions,
        segments=segments,
        **arrays,
    )
