"""Load and render preference pairs, as SFT loads and renders conversations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from galley.core.domain.preferences import PreferencePair, RenderedPair, render_pair, row_to_pair
from galley.core.domain.rendering import make_renderer
from galley.core.engine import StageContext, stage
from galley.core.sections import DataSection, FormatSection
from galley.core.stages.data import load_rows
from galley.core.stages.render import render_splits

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@stage(
    writes=("train_rows", "eval_rows", "row_origins", "data_split"),
    ports=("datasets",),
)
def load_preferences(ctx: StageContext, data: DataSection, seed: int) -> dict[str, Any]:
    """Load the train pairs and the eval pairs (or hold out ``eval_holdout`` train pairs)."""
    return load_rows(ctx, row_to_pair, data, seed)


@stage(
    writes=("train_data", "eval_data", "chat_renderer", "skipped_examples"),
)
def render_pairs(
    ctx: StageContext,
    session: TrainingSession,
    train_rows: Sequence[PreferencePair],
    eval_rows: Sequence[PreferencePair],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    render: FormatSection,
) -> dict[str, Any]:
    """Tokenize both sides of every pair with the session's tokenizer, weighting the answers;
    a pair either side of which cannot fit ``max_length`` is skipped whole."""
    chat, max_length = make_renderer(render.renderer, session.tokenizer), render.max_length

    def fit(pair: PreferencePair) -> RenderedPair:
        return render_pair(chat, pair, max_length, render.truncation)

    rendered = render_splits(ctx, fit, train_rows, eval_rows, row_origins, max_length)
    train = rendered["train_data"]
    tokens = sum(d.model_input.length for pair in train for d in pair.datums)
    ctx.log.info("pairs.rendered", train_pairs=len(train), train_tokens=tokens)
    return {**rendered, "chat_renderer": chat}
