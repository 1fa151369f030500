"""RL's stages: prompts in, then each step samples from the current weights, scores, and
trains on the completions' advantages; held-out rewards are measured by greedy answers."""

from galley.core.stages.rl.data import RenderedTask, load_tasks, render_prompts, start_reference
from galley.core.stages.rl.step import (
    answers_stage,
    plan_rollouts,
    reward_eval,
    rl_step,
    settle_sampling,
)

__all__ = [
    "RenderedTask",
    "answers_stage",
    "load_tasks",
    "plan_rollouts",
    "render_prompts",
    "reward_eval",
    "rl_step",
    "settle_sampling",
    "start_reference",
]
