"""Load stage: dataset rows -> conversations, with a held-out split."""

from __future__ import annotations

from typing import Any

import numpy as np

from galley.core.chat import Conversation
from galley.core.data_formats import row_to_conversation
from galley.core.engine import StageContext, stage
from galley.core.errors import ValidationError

Origin = tuple[str, int]  # (source, row): where a conversation came from, for error messages


def _conversations(
    ctx: StageContext, handle: Any, source: str
) -> tuple[list[Conversation], list[Origin]]:
    rows = ctx.adapters.datasets.to_list(handle)
    conversations = [row_to_conversation(row, source=source, index=i) for i, row in enumerate(rows)]
    return conversations, [(source, i) for i in range(len(rows))]


@stage(
    writes=("train_rows", "eval_rows", "row_origins"),
    ports=("datasets",),
)
def load_dataset(
    ctx: StageContext, dataset: str, train_split: str, eval_split: str, eval_holdout: int, seed: int
) -> dict[str, Any]:
    """Load the train split and the eval split (or hold out ``eval_holdout`` train rows)."""
    store = ctx.adapters.datasets
    handle = store.load(dataset)
    train, train_from = _conversations(
        ctx, store.get_split(handle, train_split), f"{dataset}[{train_split}]"
    )
    if eval_split in store.splits(handle):
        held_out, eval_from = _conversations(
            ctx, store.get_split(handle, eval_split), f"{dataset}[{eval_split}]"
        )
    else:
        if eval_holdout >= len(train):
            raise ValidationError(
                "eval_holdout",
                f"holding out {eval_holdout} rows leaves none of the {len(train)} rows "
                f"of {dataset!r} to train on",
            )
        order = np.random.default_rng([seed, 1]).permutation(len(train))
        held_out, eval_from = (
            [train[i] for i in order[:eval_holdout]],
            [train_from[i] for i in order[:eval_holdout]],
        )
        kept = sorted(order[eval_holdout:])
        train, train_from = [train[i] for i in kept], [train_from[i] for i in kept]
    if not train:
        raise ValidationError("dataset", f"{dataset!r} split {train_split!r} has no rows")
    ctx.log.info("dataset.loaded", dataset=dataset, train_rows=len(train), eval_rows=len(held_out))
    return {
        "train_rows": train,
        "eval_rows": held_out,
        "row_origins": {"train": train_from, "eval": eval_from},
    }


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
    rows, origins = _conversations(ctx, handle, f"{dataset}[{split}]")
    if not rows:
        raise ValidationError("dataset", f"{dataset!r} split {split!r} has no rows")
    ctx.log.info("dataset.loaded", dataset=dataset, split=split, rows=len(rows))
    return {"eval_rows": rows, "row_origins": {"eval": origins}}
