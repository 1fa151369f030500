"""RL's stages: prompts in, then each step samples from the current weights, scores, and
trains on the completions' advantages; held-out rewards are measured by greedy answers."""

from galley.core.stages.rl.advantages import start_reference
from galley.core.stages.rl.data import RenderedTask, check_rewards, load_tasks, render_prompts
from galley.core.stages.rl.sampling import plan_recipe
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
    "check_rewards",
    "load_tasks",
    "plan_recipe",
    "plan_rollouts",
    "render_prompts",
    "reward_eval",
    "rl_step",
    "settle_sampling",
    "start_reference",
]
