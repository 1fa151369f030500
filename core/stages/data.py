"""Load stages: dataset rows -> conversations (or another workflow's rows), with a held-out
split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from galley.core.domain.data_formats import row_to_conversation
from galley.core.engine import StageContext, stage
from galley.core.errors import ValidationError
from galley.core.runs.records import DataSplit
from galley.core.sections import DataSection

Origin = tuple[str, int]  # (source, row): where a row came from, for error messages
RowParser = Callable[..., Any]  # (row, *, source, index) -> the row read, or a DataError


def _parsed(
    ctx: StageContext, handle: Any, source: str, parse: RowParser = row_to_conversation
) -> tuple[list[Any], list[Origin]]:
    rows = ctx.adapters.datasets.to_list(handle)
    parsed = [parse(row, source=source, index=i) for i, row in enumerate(rows)]
    return parsed, [(source, i) for i in range(len(rows))]


def holdout_size(train_rows: int, eval_holdout: int) -> int:
    """How many train rows to hold out for evaluation when the dataset has no eval split: at
    most ``eval_holdout`` and at most a tenth of the rows, so a small file of one's own still
    trains on most of it (a file of fewer than 10 rows holds none out)."""
    return min(eval_holdout, train_rows // 10)


def load_rows(ctx: StageContext, parse: RowParser, data: DataSection, seed: int) -> dict[str, Any]:
    """The train split and the eval split (or up to ``eval_holdout`` train rows held out, see
    :func:`holdout_size`), each row read by ``parse``: what a loading stage returns."""
    dataset, train_split, eval_split = data.dataset, data.train_split, data.eval_split
    store = ctx.adapters.datasets
    handle = store.load(dataset)
    train, train_from = _parsed(
        ctx, store.get_split(handle, train_split), f"{dataset}[{train_split}]", parse
    )
    if not train:
        raise ValidationError("dataset", f"{dataset!r} split {train_split!r} has no rows")
    held = eval_split not in store.splits(handle)
    if not held:
        held_out, eval_from = _parsed(
            ctx, store.get_split(handle, eval_split), f"{dataset}[{eval_split}]", parse
        )
    else:
        count = holdout_size(len(train), data.eval_holdout)
        order = np.random.default_rng([seed, 1]).permutation(len(train))
        held_out, eval_from = (
            [train[i] for i in order[:count]],
            [train_from[i] for i in order[:count]],
        )
        kept = sorted(order[count:])
        train, train_from = [train[i] for i in kept], [train_from[i] for i in kept]
    split = DataSplit(dataset, len(train), len(held_out), eval_split, held)
    ctx.log.info("dataset.loaded", dataset=dataset, split=split.describe())
    return {
        "train_rows": train,
        "eval_rows": held_out,
        "row_origins": {"train": train_from, "eval": eval_from},
        "data_split": split,
    }


@stage(
    writes=("train_rows", "eval_rows", "row_origins", "data_split"),
    ports=("datasets",),
)
def load_dataset(ctx: StageContext, data: DataSection, seed: int) -> dict[str, Any]:
    """Load the train split and the eval split (or hold out ``eval_holdout`` train rows)."""
    return load_rows(ctx, row_to_conversation, data, seed)


@stage(writes=())
def check_split(ctx: StageContext, data_split: DataSplit, batch_size: int) -> dict[str, Any]:
    """Refuse a held-out set that leaves fewer training rows than one batch, before anything
    is written (a small file of one's own with a large ``eval_holdout``)."""
    split = data_split
    if split.held_out and split.eval_rows and split.train_rows < batch_size:
        total = split.train_rows + split.eval_rows
        raise ValidationError(
            "eval_holdout",
            f"holding out {split.eval_rows} of the {total} rows of {split.dataset!r} leaves "
            f"{split.train_rows}, fewer than one batch (batch_size {batch_size}): give a "
            "smaller eval_holdout or batch_size, or an eval split",
        )
    return {}


@stage(
    writes=("eval_rows", "row_origins"),
    ports=("datasets",),
)
def load_split(ctx: StageContext, dataset: str, split: str, max_examples: int) -> dict[str, Any]:
    """Load one split to evaluate on: its first ``max_examples`` rows (0: all of them)."""
    store = ctx.adapters.datasets
    handle = store.get_split(store.load(dataset), split)
    if max_examples:
        handle = store.take(handle, max_examples)
    rows, origins = _parsed(ctx, handle, f"{dataset}[{split}]")
    if not rows:
        raise ValidationError("dataset", f"{dataset!r} split {split!r} has no rows")
    ctx.log.info("dataset.loaded", dataset=dataset, split=split, rows=len(rows))
    return {"eval_rows": rows, "row_origins": {"eval": origins}}
