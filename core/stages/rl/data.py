"""Load RL's prompts (with their reference answers, when rows have them), check the rewards
can score them, and render them as generation prompts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from galley.core.domain.model_input import ModelInput
from galley.core.domain.rendering import DoesNotFitError, make_renderer
from galley.core.domain.rewards import check_references
from galley.core.domain.rl import Task, row_to_task
from galley.core.engine import StageContext, stage
from galley.core.sections import DataSection, FormatSection, RolloutSection
from galley.core.stages.data import load_rows
from galley.core.stages.render import render_splits

if TYPE_CHECKING:
    from galley.core.stages.rl.sampling import RolloutRecipe  # it reads RenderedTask
    from galley.ports.training import TrainingSession


@attrs.frozen
class RenderedTask:
    """A task and the tokens that prompt the model to answer it."""

    task: Task
    prompt: ModelInput


@stage(
    writes=("train_rows", "eval_rows", "row_origins", "data_split"),
    ports=("datasets",),
)
def load_tasks(ctx: StageContext, data: DataSection, seed: int) -> dict[str, Any]:
    """Load the train prompts and the eval prompts (or hold out ``eval_holdout`` train rows)."""
    return load_rows(ctx, row_to_task, data, seed)


@stage()
def check_rewards(
    ctx: StageContext,
    recipe: RolloutRecipe,
    train_rows: Sequence[Task],
    eval_rows: Sequence[Task],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
) -> dict[str, Any]:
    """Refuse rows the run's rewards cannot score (one that needs a reference answer, on a
    row without one), naming the file and row, before the run is recorded."""
    check_references(recipe.rewards, {"train": train_rows, "eval": eval_rows}, row_origins)
    return {}


@stage(
    writes=("train_data", "eval_data", "chat_renderer", "skipped_examples"),
)
def render_prompts(
    ctx: StageContext,
    session: TrainingSession,
    train_rows: Sequence[Task],
    eval_rows: Sequence[Task],
    row_origins: Mapping[str, Sequence[tuple[str, int]]],
    render: FormatSection,
    rollout: RolloutSection,
) -> dict[str, Any]:
    """Each prompt as the tokens that ask for the assistant's answer; a prompt that leaves
    fewer than ``max_tokens`` of ``max_length`` for the answer is skipped and counted."""
    chat, max_length = make_renderer(render.renderer, session.tokenizer), render.max_length
    max_tokens = rollout.max_tokens

    def fit(task: Task) -> RenderedTask:
        prompt = chat.generation_prompt(task.prompt)
        if prompt.length + max_tokens > max_length:
            raise DoesNotFitError(
                "max_length",
                f"prompt of {prompt.length} tokens leaves less than max_tokens {max_tokens}",
            )
        return RenderedTask(task, prompt)

    rendered = render_splits(ctx, fit, train_rows, eval_rows, row_origins, max_length)
    ctx.log.info("prompts.rendered", train_prompts=len(rendered["train_data"]))
    return {**rendered, "chat_renderer": chat}
