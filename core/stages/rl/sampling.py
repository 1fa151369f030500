"""How an RL step's batch is sampled, scored and recorded, on-policy or some steps ahead.

A batch is written to ``rollouts/step-NNNNNN.jsonl`` under the run as soon as it is scored,
with every token and log-probability, so a run resumed from a checkpoint reads back a batch
that was sampled before the checkpoint (off-policy) instead of sampling it from other
weights."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from galley.core.domain.batching import BatchPlan
from galley.core.domain.rendering import Renderer
from galley.core.domain.rewards import Reward, resolve_rewards
from galley.core.domain.rl import group_advantages
from galley.core.domain.types import Completion, SampledSequence, SamplingParams
from galley.core.engine import StageContext, stage
from galley.core.runs.layout import RunPaths
from galley.core.sections import RewardSection, RolloutSection
from galley.core.stages.rl.data import RenderedTask

if TYPE_CHECKING:
    from galley.ports.blobs import BlobStore
    from galley.ports.completer import Completer


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of step ``step``: a resumed run samples what the first attempt did."""
    return (seed * 1_000_003 + step) % 2**31


@attrs.frozen
class Scored:
    """A batch's completions (prompt-major: prompt p's samples are rows p*G ... p*G+G-1) and
    their rewards, total and per reward function."""

    tasks: tuple[RenderedTask, ...]
    completions: tuple[Completion, ...]
    total: np.ndarray[Any, Any]  # prompts x group size
    per_reward: Mapping[str, np.ndarray[Any, Any]]  # name -> prompts x group size

    @property
    def texts(self) -> list[str]:
        return [s.text for c in self.completions for s in c.sequences]

    def prompts(self, start: int, end: int) -> Scored:
        """The completions of prompts ``start`` to ``end`` (their groups whole)."""
        return Scored(
            self.tasks[start:end],
            self.completions[start:end],
            self.total[start:end],
            {k: v[start:end] for k, v in self.per_reward.items()},
        )


def sample_and_score(
    completer: Completer,
    tasks: Sequence[RenderedTask],
    params: SamplingParams,
    group_size: int,
    rewards: Sequence[Reward],
) -> Scored:
    completions = completer.complete_batch(
        [t.prompt for t in tasks], params, num_samples=group_size
    )
    examples = [t.task.example() for t in tasks for _ in range(group_size)]
    texts = [s.text for c in completions for s in c.sequences]
    shape = (len(tasks), group_size)
    per_reward = {r.name: np.asarray(r.score(examples, texts)).reshape(shape) for r in rewards}
    total = sum((r.weight * per_reward[r.name] for r in rewards), np.zeros(shape))
    return Scored(tuple(tasks), tuple(completions), total, per_reward)


def sampling_params(
    renderer: Renderer, max_tokens: int, temperature: float, seed: int | None
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, stop=renderer.stop_sequences, seed=seed
    )


@attrs.frozen
class RolloutRecipe:
    """How the run's answers are asked for, sampled and scored: in the chat format of
    ``renderer``, with the ``rollout`` settings, scored by ``rewards``; sampling is seeded by
    ``seed`` (the run's)."""

    renderer: Renderer = attrs.field(repr=False)
    rollout: RolloutSection
    rewards: tuple[Reward, ...]
    seed: int

    def params(self, temperature: float, seed: int | None) -> SamplingParams:
        """Sampling up to ``rollout.max_tokens`` tokens, stopping where the chat format ends
        an answer."""
        return sampling_params(self.renderer, self.rollout.max_tokens, temperature, seed)

    @property
    def greedy(self) -> SamplingParams:
        return self.params(0.0, 0)


@stage(
    writes=("recipe",),
)
def plan_recipe(
    ctx: StageContext,
    chat_renderer: Renderer,
    reward: RewardSection,
    rollout: RolloutSection,
    seed: int,
) -> dict[str, Any]:
    """How every answer of the run is asked for, sampled and scored (``RolloutRecipe``)."""
    rewards = tuple(resolve_rewards(reward.rewards, reward.reward_weights))
    return {"recipe": RolloutRecipe(chat_renderer, rollout, rewards, seed)}


@attrs.frozen
class RolloutSampler:
    """Samples and scores the batch of step ``step``, and records it under the run. A batch
    serves ``rollout.num_substeps`` consecutive optimizer steps, each training on its own
    prompts' groups (``minibatch``): it is sampled at the first of them, with the prompts of
    all."""

    train_data: Sequence[RenderedTask] = attrs.field(repr=False)
    batch_plan: BatchPlan
    recipe: RolloutRecipe
    scale_rewards: bool  # as the advantages recorded with the rollouts are
    paths: RunPaths  # the run's: its batches go in paths.rollouts
    total_steps: int = 0

    @property
    def substeps(self) -> int:
        return self.recipe.rollout.num_substeps

    @property
    def group_size(self) -> int:
        return self.recipe.rollout.group_size

    def first_step(self, step: int) -> int:
        """The step whose batch step ``step`` trains on (where it was sampled)."""
        return (step - 1) // self.substeps * self.substeps + 1

    def _steps(self, step: int) -> range:
        first = self.first_step(step)
        return range(first, min(first + self.substeps, self.total_steps + 1))

    def _prompts(self, step: int) -> list[int]:
        indices: list[int] = self.batch_plan.indices(step - 1).tolist()
        return indices

    def tasks(self, step: int) -> list[RenderedTask]:
        """The prompts of the batch step ``step`` trains on: every substep's."""
        return [self.train_data[i] for s in self._steps(step) for i in self._prompts(s)]

    def minibatch(self, scored: Scored, step: int) -> Scored:
        """Of a batch, the groups step ``step`` trains on."""
        start = sum(len(self._prompts(s)) for s in range(self.first_step(step), step))
        return scored.prompts(start, start + len(self._prompts(step)))

    def key(self, step: int) -> str:
        return self.paths.rollout_batch(step)

    def batches_ahead(self, step: int) -> list[int]:
        """The first steps of the batches after step ``step``'s own that may be sampled from
        the weights step ``step`` started from: those at most ``max_steps_off_policy``
        updates ahead of them."""
        off_policy = self.recipe.rollout.max_steps_off_policy
        ahead = range(step + 1, min(step + off_policy, self.total_steps) + 1)
        return [s for s in ahead if self.first_step(s) == s]

    def sample(self, completer: Completer, step: int, blobs: BlobStore) -> Scored:
        step = self.first_step(step)
        recipe = self.recipe
        params = recipe.params(recipe.rollout.temperature, step_seed(recipe.seed, step))
        scored = sample_and_score(
            completer, self.tasks(step), params, self.group_size, recipe.rewards
        )
        blobs.write(self.key(step), rollout_lines(scored, self.scale_rewards))
        return scored

    def sample_ahead(
        self, completer: Future[Completer], steps: Sequence[int], blobs: BlobStore
    ) -> tuple[Prefetch, ...]:
        """Start sampling the batches of ``steps``, one after another in a thread, from the
        completer the future gives (the weights as of its request), while earlier steps
        train."""
        futures: list[Future[Scored]] = [Future() for _ in steps]

        def work() -> None:
            for step, future in zip(steps, futures, strict=True):
                try:
                    future.set_result(self.sample(completer.result(), step, blobs))
                except BaseException as error:  # delivered to whoever waits for the batch
                    future.set_exception(error)

        name = f"galley-rl-sample-{steps[0]}"
        threading.Thread(target=work, name=name, daemon=True).start()
        return tuple(Prefetch(step, future) for step, future in zip(steps, futures, strict=True))

    def read(self, step: int, blobs: BlobStore) -> Scored | None:
        """The batch step ``step`` trains on as recorded, when it was (None otherwise)."""
        step = self.first_step(step)
        key = self.key(step)
        if not blobs.exists(key):
            return None
        rows = [json.loads(line) for line in blobs.read(key).decode().splitlines() if line]
        tasks = self.tasks(step)
        groups: list[list[dict[str, Any]]] = [[] for _ in tasks]
        for row in rows:
            groups[row["group"]].append(row)
        completions = tuple(
            Completion(
                group[0]["prompt_tokens"],
                [
                    SampledSequence(
                        r["token_ids"], r["logprobs"], r["stop_reason"], r["completion"]
                    )
                    for r in sorted(group, key=lambda r: r["sample"])
                ],
            )
            for group in groups
        )
        shape = (len(tasks), self.group_size)
        total = np.asarray([r["reward"] for r in rows]).reshape(shape)
        names = [r.name for r in self.recipe.rewards]
        per_reward = {n: np.asarray([r["rewards"][n] for r in rows]).reshape(shape) for n in names}
        return Scored(tuple(tasks), completions, total, per_reward)


@attrs.frozen
class SampledBatch:
    """The batch the current substeps train on, and the step that sampled it."""

    step: int
    scored: Scored


@attrs.frozen
class Prefetch:
    """A batch being sampled ahead, for step ``step``."""

    step: int
    future: Future[Scored] = attrs.field(eq=False)


@attrs.frozen
class RolloutBatches:
    """What the RL step samples from, and what it has sampled: how a batch is sampled
    (``sampler``), the batch the current substeps train on, and the batches being sampled
    ahead."""

    sampler: RolloutSampler
    sampled: SampledBatch | None = None
    ahead: tuple[Prefetch, ...] = ()


def rollout_lines(scored: Scored, scale_rewards: bool) -> bytes:
    """One JSON line per completion: what it answered and with which tokens, its rewards and
    its advantage in its group."""
    advantages, _ = group_advantages(scored.total, scale_rewards)
    lines = []
    for p, (task, completion) in enumerate(zip(scored.tasks, scored.completions, strict=True)):
        prompt = task.task.prompt.messages[-1].content
        for s, sequence in enumerate(completion.sequences):
            row = {
                "group": p,
                "sample": s,
                "prompt": prompt,
                "completion": sequence.text,
                "reward": float(scored.total[p, s]),
                "rewards": {k: float(v[p, s]) for k, v in scored.per_reward.items()},
                "advantage": float(advantages[p, s]),
                "tokens": len(sequence.tokens),
                "prompt_tokens": list(completion.prompt_tokens),
                "token_ids": list(sequence.tokens),
                "logprobs": list(sequence.logprobs),
                "stop_reason": sequence.stop_reason,
            }
            lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()
