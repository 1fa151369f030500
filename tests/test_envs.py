"""Environments: episodes turn by turn (rewards, termination, the turn limit), group
building, turns as datums, and the RL workflow on environments, on noop and JAX adapters."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from galley.adapters.noop import NoopCompleter, noop_adapters
from galley.adapters.noop.tokenizer import ByteTokenizer
from galley.core.domain.chat import Conversation
from galley.core.domain.envs import Action, Observation, Transition, build_group
from galley.core.domain.model_input import ModelInput
from galley.core.domain.rendering import make_renderer
from galley.core.domain.types import SamplingParams
from galley.core.errors import ValidationError
from galley.core.keys import join_key
from galley.core.stages.rl.envs import episode_rollouts, group_seed, play_episodes
from galley.core.stages.rl.sampling import step_seed
from galley.workflows.rl import RLConfig, run

PAGE = Path(__file__).resolve().parents[1] / "docs" / "environments.md"


class Countdown:
    """Ends after ``turns`` answers; answer k earns k + 1 plus ``bonus``. Shows tokens
    (``[turn]``) after its first, conversational, observation."""

    def __init__(self, turns: int, bonus: float = 0.0) -> None:
        self.turns, self.bonus, self.seen = turns, bonus, 0
        self.actions: list[Action] = []

    def initial_observation(self) -> Observation:
        return Observation(Conversation.of(("user", "count down")))

    def step(self, action: Action) -> Transition:
        self.actions.append(action)
        self.seen += 1
        reward = self.seen + self.bonus
        if self.seen == self.turns:
            return Transition(reward, done=True, metrics={"steps": 1.0})
        nxt = Observation(tokens=ModelInput.from_ints([0, 60 + self.seen]), stop=("!",))
        return Transition(reward, done=False, observation=nxt, metrics={"steps": 1.0})


def test_observations_and_transitions_refuse_what_an_episode_cannot_use() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Observation()
    with pytest.raises(ValidationError, match="exactly one"):
        Observation(Conversation.of(("user", "a")), ModelInput.from_ints([1]))
    with pytest.raises(ValidationError, match="goes on needs one"):
        Transition(1.0, done=False)


def test_episodes_run_turn_by_turn_until_done_or_the_turn_limit() -> None:
    envs = [Countdown(1), Countdown(3, bonus=0.5), Countdown(9)]
    renderer = make_renderer("role_colon", ByteTokenizer())
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=3)
    episodes = play_episodes(NoopCompleter(vary=0.5), envs, renderer, params, max_turns=4)
    assert [len(e.turns) for e in episodes] == [1, 3, 4]
    assert [e.finished for e in episodes] == [True, True, False]
    assert [e.total for e in episodes] == [1.0, 1.5 + 2.5 + 3.5, 1 + 2 + 3 + 4]
    assert [e.metrics["steps"] for e in episodes] == [1.0, 3.0, 4.0]
    # The first turn renders the conversation; later ones show the environment's tokens.
    first = renderer.generation_prompt(Conversation.of(("user", "count down")))
    assert episodes[2].turns[0].prompt == first
    assert [t.prompt.to_ints() for t in episodes[2].turns[1:]] == [[0, 61], [0, 62], [0, 63]]
    for env, episode in zip(envs, episodes, strict=True):  # each env saw its own answers
        assert [a.tokens for a in env.actions] == [t.sequence.tokens for t in episode.turns]


def test_a_group_shown_the_same_prompt_gets_separate_samples() -> None:
    renderer = make_renderer("role_colon", ByteTokenizer())
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=0)
    envs = [Countdown(1) for _ in range(4)]
    episodes = play_episodes(NoopCompleter(vary=0.9), envs, renderer, params, max_turns=1)
    assert len({e.turns[0].sequence.tokens for e in episodes}) > 1


def test_group_builders_make_group_size_environments_or_are_refused() -> None:
    calls: list[tuple[Mapping[str, Any], int, int]] = []

    def builder(example: Mapping[str, Any], size: int, seed: int) -> list[Countdown]:
        calls.append((example, size, seed))
        return [Countdown(2) for _ in range(size)]

    assert len(build_group(builder, {"row": 1}, 3, 7)) == 3
    assert calls == [({"row": 1}, 3, 7)]
    with pytest.raises(ValidationError, match="made 2 environments, expected 3"):
        build_group(lambda e, n, s: [Countdown(1), Countdown(1)], {}, 3, 0)


def test_every_turn_trains_with_its_episodes_advantage() -> None:
    renderer = make_renderer("role_colon", ByteTokenizer())
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=1)
    envs = [Countdown(2), Countdown(1), Countdown(1), Countdown(1)]  # two groups of two
    episodes = play_episodes(NoopCompleter(vary=0.5), envs, renderer, params, max_turns=4)
    rollouts = episode_rollouts(episodes, 2, False, "tokens")
    assert len(rollouts.data) == 5  # the first episode's two turns, one for each other
    sampled_tokens = sum(len(t.sequence.tokens) for t in episodes[0].turns + episodes[1].turns)
    # Group 0's returns are 1 + 2 and 1: advantages +1 and -1; group 1's (1, 1) is left out.
    expected = [1.0, 1.0, -1.0, 0.0, 0.0]
    for datum, n, want in zip(rollouts.data, rollouts.lengths, expected, strict=True):
        advantages = datum.loss_fn_inputs["advantages"].data
        assert not advantages[: len(advantages) - n].any()  # what it was shown: no loss
        np.testing.assert_allclose(advantages[-n:], want / sampled_tokens, rtol=1e-6)
    assert rollouts.kept.tolist() == [True, False]


def page_blocks() -> tuple[str, str]:
    game, usage = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert game.startswith("# shouting_game.py")
    return game, usage


@pytest.mark.parametrize("adapters", ["noop", "jax"])
def test_the_environments_pages_example_runs(
    adapters: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    game, usage = page_blocks()
    assert len(game.splitlines()) <= 30
    (tmp_path / "shouting_game.py").write_text(game)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    if adapters == "jax":
        usage = usage.replace(
            "from galley.adapters.noop import noop_adapters",
            "from galley.adapters.composition import build_adapters",
        ).replace("noop_adapters()", "build_adapters({})")
        usage = usage.replace("max_steps=4", "max_steps=2")
    exec(compile(usage, "docs/environments.md", "exec"), {"__name__": "env_page"})
    turns, reward = map(float, capsys.readouterr().out.split()[-2:])
    assert 1.0 <= turns <= 3.0 and 0.0 <= reward <= 1.0
    run_ids = [p.name for p in (tmp_path / "runs").iterdir()] if adapters == "jax" else []
    for run_id in run_ids:  # a turn a line, with the tokens that trained
        lines = (tmp_path / "runs" / run_id / "rollouts" / "step-000001.jsonl").read_text()
        row = json.loads(lines.splitlines()[0])
        assert {"group", "sample", "turn", "return", "advantage", "token_ids"} <= set(row)


def test_environment_runs_record_turns_and_refuse_what_they_do_not_build() -> None:
    adapters = noop_adapters()

    def builder(example: Mapping[str, Any], size: int, seed: int) -> list[Countdown]:
        return [Countdown(1 + (seed + i) % 3, bonus=0.1 * i) for i in range(size)]

    config = RLConfig(max_steps=3, batch_size=2, group_size=3, eval_every=0, run_id="env")
    result = run(config, adapters, env=builder)
    # Step s's row p builds its group with seed group_seed(step_seed(0, s), p).
    assert [m["turns/mean"] for m in result.metrics] == [
        pytest.approx(
            np.mean(
                [1 + (group_seed(step_seed(0, s), p) + i) % 3 for p in (0, 1) for i in (0, 1, 2)]
            )
        )
        for s in (1, 2, 3)
    ]
    rows = adapters.blobs.read(join_key("runs", "env", "rollouts", "step-000001.jsonl"))
    assert {json.loads(line)["turn"] for line in rows.decode().splitlines()} >= {0, 1}
    with pytest.raises(ValidationError, match="max_steps_off_policy"):
        run(RLConfig(max_steps_off_policy=1, run_id="x"), noop_adapters(), env=builder)


def test_an_environment_run_stopped_and_resumed_trains_as_an_unbroken_one() -> None:
    from tests.test_rl import StopAfter

    def builder(example: Mapping[str, Any], size: int, seed: int) -> list[Countdown]:
        return [Countdown(1 + (seed + i) % 3) for i in range(size)]

    config = RLConfig(
        max_steps=6, checkpoint_every=2, batch_size=2, group_size=3, eval_every=0, run_id="cut"
    )
    whole = run(attrs.evolve(config, run_id="whole"), noop_adapters(), env=builder)
    adapters = noop_adapters()
    with pytest.raises(RuntimeError, match="stopped after step 5"):
        run(config, adapters, env=builder, observers=[StopAfter(5)])
    resumed = run(attrs.evolve(config, resume=True), adapters, env=builder)
    keys = ("reward", "turns/mean", "loss", "grad_norm", "kl")
    assert [[m[k] for k in keys] for m in resumed.metrics] == [
        [m[k] for k in keys] for m in whole.metrics
    ]
