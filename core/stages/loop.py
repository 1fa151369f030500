"""The training loop every training workflow runs: a step's gradient and update submitted,
finished steps collected, and evaluations and checkpoints on their schedules."""

from __future__ import annotations

from galley.core.engine import Every, Loop, Stage
from galley.core.stages.checkpoint import checkpoint_stage
from galley.core.stages.train import collect_results, drain, optim_step


def training_loop(
    step: Stage,
    evaluate: Stage,
    eval_every: int,
    checkpoint_every: int,
    name: str = "train",
    before_checkpoint: Stage | None = None,
) -> Loop:
    """``step`` (submitting a gradient), the optimizer update, collection; ``evaluate`` every
    ``eval_every`` steps and a checkpoint every ``checkpoint_every`` (0: never in the loop).
    Every step in flight is collected (and so recorded) before an eval row, and before a
    checkpoint's index entry exists, so a resumed run has all metrics up to it;
    ``before_checkpoint`` settles whatever else a resume needs (RL's batch sampled ahead)."""
    settle = [Every(before_checkpoint, checkpoint_every)] if before_checkpoint else []
    return Loop(
        name,
        [
            step,
            optim_step,
            collect_results,
            Every(drain, eval_every),
            Every(evaluate, eval_every),
            Every(drain, checkpoint_every),
            *settle,
            Every(checkpoint_stage("checkpoint", at="step"), checkpoint_every),
        ],
    )
