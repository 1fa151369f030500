"""Session stage: start training on the base model."""

from __future__ import annotations

from typing import Any

from galley.core.engine import StageContext, stage
from galley.core.keys import join_key
from galley.core.types import LoraConfig, SessionConfig


def run_session_config(
    base_model: str,
    lora_rank: int,
    lora_alpha: float,
    seed: int,
    output: str,
    run_id: str,
    *folder: str,
) -> SessionConfig:
    """A session of run ``run_id``, saving under ``<output>/<run_id>[/<folder>...]``."""
    return SessionConfig(
        base_model=base_model,
        lora=LoraConfig(rank=lora_rank, alpha=lora_alpha, seed=seed),
        seed=seed,
        storage_prefix=join_key(output, run_id, *folder),
        run_id=run_id,
    )


@stage(
    writes=("session",),
    ports=("training",),
)
def start_session(
    ctx: StageContext,
    base_model: str,
    lora_rank: int,
    lora_alpha: float,
    seed: int,
    output: str,
    run_id: str,
) -> dict[str, Any]:
    """Start a training session (LoRA, or full fine-tuning when lora_rank is 0)."""
    config = run_session_config(base_model, lora_rank, lora_alpha, seed, output, run_id)
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
