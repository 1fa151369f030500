"""The training session of a run: its model and LoRA, seeded by the run, saving under the
run's folder."""

from __future__ import annotations

from galley.core.domain.types import LoraConfig, SessionConfig
from galley.core.runs.layout import RunPaths
from galley.core.sections import BaseModelSection


def run_session_config(
    model: BaseModelSection,
    seed: int,
    paths: RunPaths,
    *folder: str,
    micro_batch_size: int = 0,
) -> SessionConfig:
    """A session of ``model`` for the run at ``paths``, saving under its folder (or
    ``folder`` below it: a reference's or a teacher's), running requests in passes of
    ``micro_batch_size`` datums (0: whole)."""
    return SessionConfig(
        base_model=model.base_model,
        lora=LoraConfig(rank=model.lora_rank, alpha=model.lora_alpha, seed=seed),
        seed=seed,
        storage_prefix=paths.under(*folder),
        run_id=paths.run_id,
        micro_batch_size=micro_batch_size,
    )
