"""RL on environments: each step plays ``group_size`` episodes for each of its rows, turn by
turn from the current weights, and trains every turn's sampled tokens on its episode's
advantage (``galley.core.domain.envs``). On-policy; each step's turns are recorded under the run
(``rollouts/step-NNNNNN.jsonl``, one line per turn)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from galley.core.domain.envs import (
    Action,
    Env,
    EnvGroupBuilder,
    Episode,
    Observation,
    Turn,
    build_group,
)
from galley.core.domain.model_input import ModelInput
from galley.core.domain.rendering import Renderer
from galley.core.domain.rl import group_advantages, normalised_advantages, rollout_datum
from galley.core.domain.types import SamplingParams
from galley.core.engine import FunctionStage, StageContext, reads_of
from galley.core.sections import PolicySection
from galley.core.stages.rl.advantages import Rollouts
from galley.core.stages.rl.data import RenderedTask
from galley.core.stages.rl.sampling import RolloutBatches, RolloutRecipe, step_seed
from galley.core.stages.rl.step import submit_policy_gradient
from galley.core.stages.train import Pipeline

if TYPE_CHECKING:
    from galley.ports.completer import Completer
    from galley.ports.training import TrainingSession


def _prompt(observation: Observation, renderer: Renderer) -> ModelInput:
    if observation.tokens is not None:
        return observation.tokens
    assert observation.conversation is not None  # an Observation has one of them
    return renderer.generation_prompt(observation.conversation)


def group_seed(step_seed: int, group: int) -> int:
    """The seed a step's ``group``-th group builder gets: distinct across steps and groups."""
    return (step_seed * 65_537 + group) % 2**31


def play_episodes(
    completer: Completer,
    envs: Sequence[Env],
    renderer: Renderer,
    params: SamplingParams,
    max_turns: int,
) -> list[Episode]:
    """Run every environment until it is done or has had ``max_turns`` answers. Each turn
    samples all the open episodes' answers in one call per set of stop strings; episodes
    shown the same tokens (a group's first turn) get that prompt's separate samples."""
    observations = [env.initial_observation() for env in envs]
    turns: list[list[Turn]] = [[] for _ in envs]
    metrics: list[dict[str, float]] = [{} for _ in envs]
    finished = [False] * len(envs)
    for turn in range(max_turns):
        open_ = [i for i in range(len(envs)) if not finished[i]]
        if not open_:
            break
        # Episodes shown the same tokens under the same stops share a prompt's samples.
        asks: dict[tuple[tuple[str, ...], tuple[int, ...]], list[int]] = {}
        prompts = {i: _prompt(observations[i], renderer) for i in open_}
        for i in open_:
            asks.setdefault((observations[i].stop, tuple(prompts[i].to_ints())), []).append(i)
        by_stop: dict[tuple[str, ...], list[tuple[tuple[int, ...], list[int]]]] = {}
        for (stop, tokens), who in asks.items():
            by_stop.setdefault(stop, []).append((tokens, who))
        for stop, asked in by_stop.items():
            call = SamplingParams(
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                stop=(*params.stop, *stop),
                seed=None if params.seed is None else step_seed(params.seed, turn),
            )
            samples = max(len(who) for _, who in asked)
            completions = completer.complete_batch(
                [ModelInput.from_ints(list(t)) for t, _ in asked], call, num_samples=samples
            )
            for (_, who), completion in zip(asked, completions, strict=True):
                for i, sequence in zip(who, completion.sequences, strict=False):
                    result = envs[i].step(Action(tuple(sequence.tokens), sequence.text))
                    turns[i].append(Turn(prompts[i], sequence, float(result.reward)))
                    for name, value in result.metrics.items():
                        metrics[i][name] = metrics[i].get(name, 0.0) + float(value)
                    if result.done:
                        finished[i] = True
                    else:
                        assert result.observation is not None  # a Transition checks it
                        observations[i] = result.observation
    return [Episode(tuple(t), f, m) for t, f, m in zip(turns, finished, metrics, strict=True)]


def episode_rollouts(
    episodes: Sequence[Episode], group_size: int, scale_rewards: bool, normalisation: str
) -> Rollouts:
    """A datum per turn that sampled tokens, carrying its episode's advantage (its return
    against its group's, prompt-major as ``episodes``), normalised over each kept episode's
    sampled tokens."""
    returns = np.asarray([e.total for e in episodes]).reshape(-1, group_size)
    advantages, kept = group_advantages(returns, scale_rewards)
    flat_kept = np.repeat(kept, group_size)
    lengths = [sum(len(t.sequence.tokens) for t in e.turns) for e in episodes]
    kept_at = [i for i in range(len(episodes)) if flat_kept[i]]
    factors = dict(
        zip(
            kept_at,
            normalised_advantages(
                [1.0] * len(kept_at), [lengths[i] for i in kept_at], normalisation
            ),
            strict=True,
        )
    )
    data, counts, scales = [], [], []
    for i, episode in enumerate(episodes):
        factor = factors.get(i, 0.0)
        advantage = float(advantages.reshape(-1)[i]) * factor
        for turn in episode.turns:
            if turn.sequence.tokens:
                seq = turn.sequence
                data.append(
                    rollout_datum(turn.prompt.to_ints(), seq.tokens, seq.logprobs, advantage)
                )
                counts.append(len(seq.tokens))
                scales.append(factor)
    return Rollouts(tuple(data), tuple(counts), tuple(scales), advantages, kept)


def episode_lines(
    episodes: Sequence[Episode], group_size: int, advantages: np.ndarray[Any, Any]
) -> bytes:
    """One JSON line per turn: its group and episode, what it answered with which tokens, its
    reward, and its episode's return and advantage."""
    lines = []
    for i, episode in enumerate(episodes):
        for k, turn in enumerate(episode.turns):
            row = {
                "group": i // group_size,
                "sample": i % group_size,
                "turn": k,
                "completion": turn.sequence.text,
                "reward": turn.reward,
                "return": episode.total,
                "advantage": float(advantages.reshape(-1)[i]),
                "finished": episode.finished,
                "prompt_tokens": list(turn.prompt.to_ints()),
                "token_ids": list(turn.sequence.tokens),
                "logprobs": list(turn.sequence.logprobs),
                "stop_reason": turn.sequence.stop_reason,
            }
            lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()


def episode_metrics(episodes: Sequence[Episode], group_size: int) -> dict[str, float]:
    """TRL's names where they apply (``reward`` is the mean return), turns per episode, and
    the environments' own metrics, averaged over episodes."""
    returns = np.asarray([e.total for e in episodes]).reshape(-1, group_size)
    sequences = [t.sequence for e in episodes for t in e.turns]
    logprobs = [lp for s in sequences for lp in s.logprobs]
    metrics = {
        "reward": float(returns.mean()),
        "reward_std": float(returns.std(axis=1).mean()),
        "frac_reward_zero_std": float(1.0 - group_advantages(returns, False)[1].mean()),
        "turns/mean": float(np.mean([len(e.turns) for e in episodes])),
        "episodes/finished": float(np.mean([e.finished for e in episodes])),
        "completions/mean_length": float(np.mean([len(s.tokens) for s in sequences])),
        "entropy": float(-np.mean(logprobs)) if logprobs else 0.0,
    }
    names = sorted({name for e in episodes for name in e.metrics})
    return metrics | {
        f"env/{n}": float(np.mean([e.metrics.get(n, 0.0) for e in episodes])) for n in names
    }


def env_step_stage(builder: EnvGroupBuilder) -> FunctionStage:
    """The RL step on ``builder``'s environments (see the module docstring)."""

    def env_step(
        ctx: StageContext,
        session: TrainingSession,
        batches: RolloutBatches,
        policy: PolicySection,
        step: int,
        pipeline: Pipeline,
    ) -> dict[str, Any]:
        # The rollout plan's rows, recipe and record keys; its episodes are played here.
        started = time.perf_counter()
        completer = ctx.wait(
            session.save_weights_and_get_sampling_client(), "training.sampling_client", step
        )
        handed_over = time.perf_counter()
        plan, recipe = batches.sampler, batches.sampler.recipe
        group_size, seed_now = recipe.rollout.group_size, step_seed(recipe.seed, step)
        rows = plan.batch_plan.indices(step - 1).tolist()
        envs = [
            env
            for p, i in enumerate(rows)
            for env in build_group(
                builder, plan.train_data[i].task.example(), group_size, group_seed(seed_now, p)
            )
        ]
        params = recipe.params(recipe.rollout.temperature, seed_now)
        episodes = play_episodes(completer, envs, recipe.renderer, params, recipe.rollout.max_turns)
        rollouts = episode_rollouts(
            episodes, group_size, policy.scale_rewards, policy.loss_normalisation
        )
        lines = episode_lines(episodes, group_size, rollouts.advantages)
        ctx.adapters.blobs.write(plan.key(step), lines)
        sampled_at = time.perf_counter()
        metrics = episode_metrics(episodes, group_size)
        metrics["time/waiting_s"] = handed_over - started
        metrics["time/sampling_s"] = sampled_at - handed_over
        entry = submit_policy_gradient(session, rollouts, policy, step, started, rows, metrics)
        return {"pipeline": pipeline.with_in_flight((*pipeline.in_flight, entry))}

    return FunctionStage(
        "env_step",
        env_step,
        reads=reads_of(env_step),
        writes=("pipeline",),
        ports=("training", "blobs"),
        doc="Play each row's group of episodes on the current weights; train every turn.",
    )


def env_eval_measure(builder: EnvGroupBuilder) -> Any:
    """A held-out measure: one greedy episode per eval row, its mean return and turns."""

    def env_eval(
        ctx: StageContext,
        session: TrainingSession,
        eval_data: Sequence[RenderedTask],
        recipe: RolloutRecipe,
    ) -> dict[str, float]:
        """Held-out mean return of one greedy episode per eval row."""
        sampler = ctx.wait(
            session.save_weights_and_get_sampling_client(), "training.sampling_client"
        )
        seed = recipe.seed
        envs = [env for t in eval_data for env in build_group(builder, t.task.example(), 1, seed)]
        max_turns = recipe.rollout.max_turns
        episodes = play_episodes(sampler, envs, recipe.renderer, recipe.greedy, max_turns)
        return {
            "eval/reward": float(np.mean([e.total for e in episodes])),
            "eval/turns": float(np.mean([len(e.turns) for e in episodes])),
        }

    return env_eval
