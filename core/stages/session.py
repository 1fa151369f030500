"""Session stage: start training on the base model."""

from __future__ import annotations

from typing import Any

from galley.core.engine import StageContext, stage
from galley.core.runs.layout import RunPaths
from galley.core.runs.sessions import run_session_config
from galley.core.sections import BaseModelSection


@stage(
    writes=("session",),
    ports=("training",),
)
def start_session(
    ctx: StageContext,
    model: BaseModelSection,
    seed: int,
    paths: RunPaths,
    micro_batch_size: int,
) -> dict[str, Any]:
    """Start a training session (LoRA, or full fine-tuning when lora_rank is 0), running each
    request in passes of ``micro_batch_size`` datums (0: one pass)."""
    config = run_session_config(model, seed, paths, micro_batch_size=micro_batch_size)
    session = ctx.adapters.training.start_session(config)
    info = session.model_info
    ctx.log.info(
        "session.started",
        session=session.session_id,
        model=info.name,
        lora_rank=info.lora_rank,
        trainable_parameters=info.num_trainable_parameters,
    )
    return {"session": session}
