"""Session stage: start training on the base model."""

from __future__ import annotations

from typing import Any

from galley.core.engine import StageContext, stage
from galley.core.layout import RunPaths
from galley.core.sections import BaseModelSection
from galley.core.types import LoraConfig, SessionConfig


def run_session_config(
    model: BaseModelSection, seed: int, paths: RunPaths, *folder: str
) -> SessionConfig:
    """A session of ``model`` for the run at ``paths``, saving under its folder (or
    ``folder`` below it: a reference's or a teacher's)."""
    return SessionConfig(
        base_model=model.base_model,
        lora=LoraConfig(rank=model.lora_rank, alpha=model.lora_alpha, seed=seed),
        seed=seed,
        storage_prefix=paths.under(*folder),
        run_id=paths.run_id,
    )


@stage(
    writes=("session",),
    ports=("training",),
)
def start_session(
    ctx: StageContext, model: BaseModelSection, seed: int, paths: RunPaths
) -> dict[str, Any]:
    """Start a training session (LoRA, or full fine-tuning when lora_rank is 0)."""
    session = ctx.adapters.training.start_session(run_session_config(model, seed, paths))
    info = session.model_info
    ctx.log.info(
        "session.started",
        session=session.session_id,
        model=info.name,
        lora_rank=info.lora_rank,
        trainable_parameters=info.num_trainable_parameters,
    )
    return {"session": session}
