"""Render stage: conversations -> token Datums with loss weights, truncated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from galley.core.chat import Conversation, TrainOn
from galley.core.engine import StageContext, stage
from galley.core.errors import DataError, ValidationError
from galley.core.rendering import Renderer, make_renderer, to_datum
from galley.core.types import Datum

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


def _render_all(
    renderer: Renderer,
    rows: Sequence[Conversation],
    train_on: TrainOn,
    max_length: int,
    truncate: bool,
    origins: Sequence[tuple[str, int]],
) -> list[Datum]:
    data = []
    for conversation, (source, row) in zip(rows, origins, strict=True):
        try:
            data.append(
                to_datum(renderer.render(conversation, train_on), max_length, truncate=truncate)
            )
        except ValidationError as e:
            raise DataError(source, row, e.field, e.reason) from e
    return data


@stage(
    reads=(
        "session",
        "train_rows",
        "eval_rows",
        "row_origins",
        "renderer",
        "train_on",
        "max_length",
        "truncate",
    ),
    writes=("train_data", "eval_data", "chat_renderer"),
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
    truncate: bool,
) -> dict[str, Any]:
    """Tokenize conversations with the session's tokenizer; weights follow ``train_on``."""
    chat = make_renderer(renderer, session.tokenizer)
    mode = TrainOn(train_on)
    train = _render_all(chat, train_rows, mode, max_length, truncate, row_origins["train"])
    held_out = _render_all(chat, eval_rows, mode, max_length, truncate, row_origins["eval"])
    tokens = sum(d.model_input.length for d in train)
    ctx.log.info("dataset.rendered", train_examples=len(train), train_tokens=tokens)
    return {"train_data": train, "eval_data": held_out, "chat_renderer": chat}
