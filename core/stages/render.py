"""Render stage: conversations -> token Datums with loss weights, fitted to ``max_length``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from galley.core.domain.chat import Conversation, TrainOn
from galley.core.domain.rendering import DoesNotFitError, Renderer, fit_conversation, make_renderer
from galley.core.domain.types import Datum
from galley.core.engine import StageContext, stage
from galley.core.errors import DataError, ValidationError
from galley.core.sections import RenderSection

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession

SHOWN_SKIPS = 5  # rows named one by one in the log; the rest are counted
T = TypeVar("T")


def render_rows(
    ctx: StageContext,
    fit: Callable[[Any], T],
    rows: Sequence[Any],
    origins: Sequence[tuple[str, int]],
) -> tuple[list[T], int]:
    """``fit`` of each row, and how many were skipped because they cannot fit."""
    data, skipped = [], 0
    for row, (source, index) in zip(rows, origins, strict=True):
        try:
            data.append(fit(row))
        except DoesNotFitError as e:
            skipped += 1
            if skipped <= SHOWN_SKIPS:
                ctx.log.warning("example.skipped", source=source, row=index + 1, reason=e.reason)
        except ValidationError as e:
            raise DataError(source, index, e.field, e.reason) from e
    return data, skipped


def render_splits(
    ctx: StageContext,
    fit: Callable[[Any], Any],
    train_rows: Sequence[Any],
    eval_rows: Sequence[Any],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    max_length: int,
) -> dict[str, Any]:
    """Both splits through ``fit``: ``train_data``, ``eval_data`` and ``skipped_examples``.
    Refuses a train split none of whose rows fits."""
    train, train_skips = render_rows(ctx, fit, train_rows, row_origins["train"])
    held_out, eval_skips = render_rows(ctx, fit, eval_rows, row_origins["eval"])
    if not train:
        raise ValidationError(
            "max_length",
            f"none of the {len(train_rows)} training rows fits in max_length {max_length}",
        )
    skipped = {"train": train_skips, "eval": eval_skips}
    if train_skips or eval_skips:
        ctx.log.warning("examples.skipped", max_length=max_length, **skipped)
    return {"train_data": train, "eval_data": held_out, "skipped_examples": skipped}


def conversation_fitter(chat: Renderer, render: RenderSection) -> Callable[[Conversation], Datum]:
    """A conversation as a Datum weighted by ``train_on`` and fitted to ``max_length``."""
    mode, max_length, truncation = TrainOn(render.train_on), render.max_length, render.truncation

    def fit(conversation: Conversation) -> Datum:
        return fit_conversation(chat, conversation, mode, max_length, truncation)

    return fit


@stage(
    writes=("train_data", "eval_data", "chat_renderer", "skipped_examples"),
)
def render_dataset(
    ctx: StageContext,
    session: TrainingSession,
    train_rows: Sequence[Conversation],
    eval_rows: Sequence[Conversation],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    render: RenderSection,
) -> dict[str, Any]:
    """Tokenize conversations with the session's tokenizer; weights follow ``train_on``; rows
    too long are truncated as ``truncation`` says, and those that still cannot fit skipped."""
    chat = make_renderer(render.renderer, session.tokenizer)
    fit = conversation_fitter(chat, render)
    rendered = render_splits(ctx, fit, train_rows, eval_rows, row_origins, render.max_length)
    train = rendered["train_data"]
    tokens = sum(d.model_input.length for d in train)
    ctx.log.info("dataset.rendered", train_examples=len(train), train_tokens=tokens)
    return {**rendered, "chat_renderer": chat}


@stage(
    writes=("eval_data", "chat_renderer", "skipped_examples"),
)
def render_split(
    ctx: StageContext,
    session: TrainingSession,
    eval_rows: Sequence[Conversation],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    render: RenderSection,
) -> dict[str, Any]:
    """Tokenize the rows to evaluate on, as ``render_dataset`` does its held-out rows."""
    chat = make_renderer(render.renderer, session.tokenizer)
    fit = conversation_fitter(chat, render)
    max_length = render.max_length
    data, skips = render_rows(ctx, fit, eval_rows, row_origins["eval"])
    if not data:
        raise ValidationError(
            "max_length", f"none of the {len(eval_rows)} rows fits in max_length {max_length}"
        )
    if skips:
        ctx.log.warning("examples.skipped", max_length=max_length, eval=skips)
    return {"eval_data": data, "chat_renderer": chat, "skipped_examples": {"eval": skips}}
