"""Render stage: conversations -> token Datums with loss weights, fitted to ``max_length``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from galley.core.chat import Conversation, TrainOn
from galley.core.engine import StageContext, stage
from galley.core.errors import DataError, ValidationError
from galley.core.rendering import DoesNotFitError, Renderer, fit_conversation, make_renderer
from galley.core.types import Datum

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession

SHOWN_SKIPS = 5  # rows named one by one in the log; the rest are counted


def _render_all(
    ctx: StageContext,
    renderer: Renderer,
    rows: Sequence[Conversation],
    train_on: TrainOn,
    max_length: int,
    truncation: str,
    origins: Sequence[tuple[str, int]],
) -> tuple[list[Datum], int]:
    """The rows as Datums, and how many were skipped because they cannot fit."""
    data, skipped = [], 0
    for conversation, (source, row) in zip(rows, origins, strict=True):
        try:
            data.append(fit_conversation(renderer, conversation, train_on, max_length, truncation))
        except DoesNotFitError as e:
            skipped += 1
            if skipped <= SHOWN_SKIPS:
                ctx.log.warning("example.skipped", source=source, row=row + 1, reason=e.reason)
        except ValidationError as e:
            raise DataError(source, row, e.field, e.reason) from e
    return data, skipped


@stage(
    writes=("train_data", "eval_data", "chat_renderer", "skipped_examples"),
)
def render_dataset(
    ctx: StageContext,
    session: TrainingSession,
    train_rows: Sequence[Conversation],
    eval_rows: Sequence[Conversation],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    renderer: str,
    train_on: str,
    max_length: int,
    truncation: str,
) -> dict[str, Any]:
    """Tokenize conversations with the session's tokenizer; weights follow ``train_on``; rows
    too long are truncated as ``truncation`` says, and those that still cannot fit skipped."""
    chat = make_renderer(renderer, session.tokenizer)
    mode = TrainOn(train_on)
    fit = (mode, max_length, truncation)
    train, train_skips = _render_all(ctx, chat, train_rows, *fit, row_origins["train"])
    held_out, eval_skips = _render_all(ctx, chat, eval_rows, *fit, row_origins["eval"])
    if not train:
        raise ValidationError(
            "max_length",
            f"none of the {len(train_rows)} training rows fits in max_length {max_length}",
        )
    skipped = {"train": train_skips, "eval": eval_skips}
    if train_skips or eval_skips:
        ctx.log.warning("examples.skipped", max_length=max_length, **skipped)
    tokens = sum(d.model_input.length for d in train)
    ctx.log.info("dataset.rendered", train_examples=len(train), train_tokens=tokens)
    return {
        "train_data": train,
        "eval_data": held_out,
        "chat_renderer": chat,
        "skipped_examples": skipped,
    }


@stage(
    writes=("eval_data", "chat_renderer", "skipped_examples"),
)
def render_split(
    ctx: StageContext,
    session: TrainingSession,
    eval_rows: Sequence[Conversation],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    renderer: str,
    train_on: str,
    max_length: int,
    truncation: str,
) -> dict[str, Any]:
    """Tokenize the rows to evaluate on, as ``render_dataset`` does its held-out rows."""
    chat = make_renderer(renderer, session.tokenizer)
    fit = (TrainOn(train_on), max_length, truncation)
    data, skips = _render_all(ctx, chat, eval_rows, *fit, row_origins["eval"])
    if not data:
        raise ValidationError(
            "max_length", f"none of the {len(eval_rows)} rows fits in max_length {max_length}"
        )
    if skips:
        ctx.log.warning("examples.skipped", max_length=max_length, eval=skips)
    return {"eval_data": data, "chat_renderer": chat, "skipped_examples": {"eval": skips}}
