"""RL: advantages, group filtering and datums (property tests), prompts from rows, rewards
in both forms, the workflow on noop adapters (metrics, rollouts, exact resume), and on the
JAX adapter the learner's log-probabilities of sampled tokens against the sampler's."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient, noop_adapters
from galley.core import (
    AdamParams,
    Adapters,
    ConfigError,
    LoraConfig,
    SessionConfig,
)
from galley.core.domain.chat import Conversation
from galley.core.domain.model_input import ModelInput
from galley.core.domain.rewards import resolve_rewards
from galley.core.domain.rl import (
    group_advantages,
    normalised_advantages,
    rollout_datum,
    row_to_task,
    sampled_token_kl,
)
from galley.core.domain.types import SamplingParams
from galley.core.errors import DataError
from galley.core.keys import join_key
from galley.core.stages.rl.advantages import Rollouts, with_kl_penalty
from galley.workflows.rl import RLConfig, run
from tests.hf_models import make_model

# -- advantages, groups, datums ----------------------------------------------------------

reward_matrices = st.integers(1, 6).flatmap(
    lambda groups: st.integers(2, 6).flatmap(
        lambda size: arrays(
            np.float64, (groups, size), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])
        )
    )
)


@settings(max_examples=100, deadline=None)
@given(reward_matrices, st.booleans())
def test_advantages_centre_each_group_and_drop_constant_ones(
    rewards: np.ndarray, scale: bool
) -> None:
    advantages, kept = group_advantages(rewards, scale)
    assert kept.tolist() == [len(set(row)) > 1 for row in rewards.tolist()]
    np.testing.assert_allclose(advantages.sum(axis=1), 0.0, atol=1e-9)
    for row, adv, keep in zip(rewards, advantages, kept, strict=True):
        if not keep:
            assert not adv.any()
        elif scale:
            assert adv.std() == pytest.approx(1.0)
        else:
            np.testing.assert_allclose(adv, row - row.mean())
        # A better completion never gets a smaller advantage than a worse one.
        order = np.argsort(row, kind="stable")
        assert (np.diff(adv[order]) >= -1e-9).all()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 200), min_size=1, max_size=12),
    st.lists(st.integers(0, 200), min_size=1, max_size=12),
    st.floats(-3, 3),
)
def test_a_rollout_datum_trains_only_on_its_sampled_tokens(
    prompt: list[int], tokens: list[int], advantage: float
) -> None:
    logprobs = [-(i + 1) / 10 for i in range(len(tokens))]
    datum = rollout_datum(prompt, tokens, logprobs, advantage)
    n = len(prompt) + len(tokens) - 1
    inputs = datum.loss_fn_inputs
    assert datum.model_input.to_ints() == [*prompt, *tokens][:-1]
    assert inputs["target_tokens"].tolist() == [*prompt, *tokens][1:]
    assert inputs["logprobs"].shape == inputs["advantages"].shape == (n,)
    head = len(prompt) - 1  # targets that are prompt tokens
    assert not inputs["logprobs"].data[:head].any() and not inputs["advantages"].data[:head].any()
    np.testing.assert_allclose(inputs["logprobs"].data[head:], logprobs, rtol=1e-6)
    np.testing.assert_allclose(inputs["advantages"].data[head:], advantage, rtol=1e-6, atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-2, 2), st.integers(1, 30)), min_size=1, max_size=10))
def test_normalisation_makes_the_token_sum_the_mean_it_names(
    rows: list[tuple[float, int]],
) -> None:
    advantages, lengths = [a for a, _ in rows], [n for _, n in rows]
    tokens = normalised_advantages(advantages, lengths, "tokens")
    per_token_mean = sum(a * n for a, n in rows) / sum(lengths)
    assert sum(a * n for a, n in zip(tokens, lengths, strict=True)) == pytest.approx(
        per_token_mean, abs=1e-9
    )
    sequence = normalised_advantages(advantages, lengths, "sequence")
    assert sum(a * n for a, n in zip(sequence, lengths, strict=True)) == pytest.approx(
        np.mean(advantages), abs=1e-9
    )


def test_kl_to_the_sampler_is_zero_on_policy_and_positive_off_it() -> None:
    sampler = [np.array([-1.0, -2.0]), np.array([-0.5])]
    assert sampled_token_kl(sampler, sampler) == 0.0
    assert sampled_token_kl(sampler, [s - 0.3 for s in sampler]) > 0.0


# -- prompts and rewards -----------------------------------------------------------------


def test_rows_become_prompts_with_their_reference_answers() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "Shout this: boat"},
            {"role": "assistant", "content": "BOAT"},
        ],
        "level": 2,
    }
    task = row_to_task(chat, source="d", index=0)
    assert task.prompt == Conversation.of(("user", "Shout this: boat")) and task.reference == "BOAT"
    example = task.example()
    assert example["level"] == 2 and example["reference"] == "BOAT"
    assert example["messages"] == [{"role": "user", "content": "Shout this: boat"}]
    prompt_only = row_to_task({"prompt": "Count to 3"}, source="d", index=1)
    assert prompt_only.reference is None and prompt_only.prompt.messages[-1].content == "Count to 3"
    pair = row_to_task({"prompt": "hi", "completion": "hello"}, source="d", index=2)
    assert pair.reference == "hello"
    with pytest.raises(DataError, match="row 4, field 'messages'"):
        row_to_task({"messages": [{"role": "assistant", "content": "x"}]}, source="d", index=3)


def batched_length_reward(
    prompts: Sequence[Any], completions: Sequence[str], **columns: Any
) -> list[float]:
    """TRL's form: shorter is better, scaled by a dataset column."""
    return [col / (1 + len(c)) for c, col in zip(completions, columns["weight"], strict=True)]


def test_rewards_in_both_forms_weighted() -> None:
    rewards = resolve_rewards(
        ["char_similarity", "tests.test_rl:batched_length_reward"], [1.0, 0.5]
    )
    assert [r.batched for r in rewards] == [False, True]
    assert [r.name for r in rewards] == ["char_similarity", "batched_length_reward"]
    examples = [{"reference": "BOAT", "weight": 2.0, "prompt": "p"}] * 2
    assert rewards[0].score(examples, ["BOAT", "BOX"]) == pytest.approx([1.0, 4 / 7])
    assert rewards[1].score(examples, ["ab", ""]) == pytest.approx([2 / 3, 2.0])
    with pytest.raises(ConfigError, match="2 weights for 1 rewards"):
        resolve_rewards(["exact_match"], [1.0, 2.0])
    with pytest.raises(ConfigError, match="cannot be imported"):
        resolve_rewards(["tests.test_rl:nothing_here"])


# -- the workflow on noop adapters -------------------------------------------------------

TRL_METRICS = {
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completions/mean_length",
    "entropy",
    "kl",
    "clip_ratio",
    "rewards/char_similarity/mean",
    "time/sampling_s",
    "time/waiting_s",
}


def test_rl_runs_on_noop_adapters_with_trls_metrics_and_rollouts(adapters: Adapters) -> None:
    result = run(RLConfig(max_steps=4, eval_every=2, run_id="r1"), adapters)
    assert result.steps == 4 and [m["step"] for m in result.metrics] == [1, 2, 3, 4]
    for m in result.metrics:
        assert TRL_METRICS | {"loss", "lr", "grad_norm"} <= set(m)
        assert m["kl"] < 1e-6  # on-policy: the learner scores the sampled tokens as sampled
        assert 0.0 <= m["frac_reward_zero_std"] <= 1.0 and m["completions/mean_length"] > 0
    assert [e["step"] for e in result.eval] == [0, 2, 4]
    assert {"eval/reward", "eval/rewards/char_similarity"} <= set(result.eval[0])
    rollouts = adapters.blobs.read(join_key("runs", "r1", "rollouts", "step-000003.jsonl"))
    lines = [json.loads(x) for x in rollouts.decode().splitlines()]
    assert len(lines) == 8 * 8  # batch_size prompts x group_size completions
    assert {"prompt", "completion", "reward", "rewards", "advantage", "group"} <= set(lines[0])
    for group in range(8):
        advantages = [x["advantage"] for x in lines if x["group"] == group]
        assert sum(advantages) == pytest.approx(0.0, abs=1e-9)
    assert len(result.answers_before) == len(result.answers_after) == 4


class CountingUpdates:
    """A training client whose sampling clients record, for each batch they sample (by its
    seed: a step's with seed 0), how many updates the weights they were handed had."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.updates, self.sampled_after = inner, 0, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start_session(self, config: SessionConfig) -> Any:
        return CountingSession(self, self.inner.start_session(config))


class CountingSession:
    def __init__(self, client: CountingUpdates, inner: Any) -> None:
        self.client, self.inner = client, inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def optim_step(self, params: AdamParams) -> Any:
        self.client.updates += 1
        return self.inner.optim_step(params)

    def save_weights_and_get_sampling_client(self) -> Any:
        updates, client = self.client.updates, self.client
        completer = self.inner.save_weights_and_get_sampling_client().result()

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(completer, name)

            def complete_batch(self, prompts: Any, params: SamplingParams, **kw: Any) -> Any:
                client.sampled_after.setdefault(params.seed, updates)
                return completer.complete_batch(prompts, params, **kw)

        future: Future[Any] = Future()
        future.set_result(Recording())
        return future


@pytest.mark.parametrize(("off_policy", "substeps"), [(0, 1), (1, 1), (2, 1), (1, 2), (2, 2)])
def test_a_batch_is_sampled_from_weights_at_most_max_steps_off_policy_updates_old(
    off_policy: int, substeps: int
) -> None:
    """Batch f (trained first at step f) is sampled from the weights after f - 1 - k updates
    (k = max_steps_off_policy; none before the first), while earlier steps train."""
    adapters = noop_adapters()
    counting = CountingUpdates(adapters.training)
    adapters = adapters.replace(training=counting)
    config = RLConfig(
        max_steps=6,
        eval_every=0,
        num_samples=0,
        max_steps_off_policy=off_policy,
        num_substeps=substeps,
        batch_size=4,
        run_id="off",
    )
    kl = [m["kl"] for m in run(config, adapters).metrics]
    firsts = range(1, 7, substeps)
    assert {f: counting.sampled_after[f] for f in firsts} == {
        f: max(0, f - 1 - off_policy) for f in firsts
    }
    # The learner's log-probabilities part from the sampler's exactly when the weights moved.
    stale = [
        step - 1 - counting.sampled_after[(step - 1) // substeps * substeps + 1]
        for step in range(1, 7)
    ]
    assert [k > 1e-6 for k in kl] == [n > 0 for n in stale]
    # Every batch was recorded, with its tokens, before it trained.
    for step in firsts:
        rows = adapters.blobs.read(join_key("runs", "off", "rollouts", f"step-{step:06d}.jsonl"))
        first = json.loads(rows.decode().splitlines()[0])
        assert {"token_ids", "logprobs", "prompt_tokens", "stop_reason"} <= set(first)


class StopAfter:
    """An observer that stops a run at the end of a given step, as a crash would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        pass

    def on_iteration_end(self, loop: str, counter: int) -> None:
        if counter == self.step:
            raise RuntimeError(f"stopped after step {counter}")

    def on_metrics(self, stream: str, step: int, metrics: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("off_policy", "substeps", "checkpoint_every"),
    [(0, 1, 2), (1, 1, 2), (2, 1, 2), (0, 2, 3), (1, 2, 3)],
    ids=["on-policy", "sampled-ahead", "two-ahead", "substeps", "substeps-ahead"],
)
def test_a_run_stopped_and_resumed_trains_as_an_unbroken_one(
    off_policy: int, substeps: int, checkpoint_every: int
) -> None:
    """With a batch sampled ahead, or one shared by substeps and resumed between them: the
    batch a resumed step needs was recorded before the checkpoint."""
    config = RLConfig(
        max_steps=6,
        checkpoint_every=checkpoint_every,
        eval_every=0,
        max_steps_off_policy=off_policy,
        num_substeps=substeps,
        batch_size=4,
        kl_penalty_coef=0.1,
        run_id="cut",
    )
    whole = run(attrs.evolve(config, run_id="whole"), noop_adapters())
    adapters = noop_adapters()
    with pytest.raises(RuntimeError, match="stopped after step 5"):
        run(config, adapters, observers=[StopAfter(5)])
    resumed = run(attrs.evolve(config, resume=True), adapters)
    keys = ("reward", "loss", "grad_norm", "kl", "kl_ref")
    assert [[m[k] for k in keys] for m in resumed.metrics] == [
        [m[k] for k in keys] for m in whole.metrics
    ]


def test_substeps_share_one_batch_each_training_on_its_own_prompts(adapters: Adapters) -> None:
    config = RLConfig(max_steps=4, batch_size=4, num_substeps=2, eval_every=0, run_id="sub")
    kl = [m["kl"] for m in run(config, adapters).metrics]
    assert kl[0] < 1e-6 and kl[2] < 1e-6  # the first substep trains on its own weights' samples
    assert kl[1] > 1e-6 and kl[3] > 1e-6  # the second on samples of the weights before
    folder = join_key("runs", "sub", "rollouts")
    recorded = sorted(k.rsplit("/", 1)[-1] for k in adapters.blobs.list(folder))
    assert recorded == ["step-000001.jsonl", "step-000003.jsonl"]  # sampled every 2 steps
    rows = adapters.blobs.read(join_key(folder, "step-000001.jsonl")).decode().splitlines()
    assert len(rows) == 2 * 4 * 8  # both substeps' prompts x group_size


def test_the_kl_penalty_moves_each_sampled_tokens_advantage_by_its_log_ratio() -> None:
    prompt, tokens = [1, 2, 3], [4, 5]
    sampler_lp = [-1.0, -2.0]
    kept = rollout_datum(prompt, tokens, sampler_lp, 0.5 * 0.25)
    dropped = rollout_datum(prompt, tokens, sampler_lp, 0.0)
    rollouts = Rollouts((kept, dropped), (2, 2), (0.25, 0.0), np.zeros((1, 2)), np.ones(1, bool))
    reference = [np.array([0.0, -9.0, -1.5, -1.0]), np.array([0.0, -9.0, -3.0, -3.0])]
    penalised, kl_ref = with_kl_penalty(rollouts, reference, coef=0.2)
    diffs = np.array([-1.0 + 1.5, -2.0 + 1.0])  # sampler - reference on the kept datum
    assert kl_ref == pytest.approx(diffs.mean())
    got = penalised.data[0].loss_fn_inputs["advantages"].data
    np.testing.assert_allclose(got[:2], 0.0)  # prompt targets stay untrained
    np.testing.assert_allclose(got[2:], 0.125 + 0.2 * 0.25 * (diffs.mean() - diffs), rtol=1e-6)
    assert penalised.data[1] == dropped  # a left-out group's completion is not penalised


def test_rl_with_a_kl_penalty_scores_against_the_starting_weights(adapters: Adapters) -> None:
    result = run(RLConfig(max_steps=4, eval_every=0, kl_penalty_coef=0.5, run_id="kl"), adapters)
    kl_ref = [m["kl_ref"] for m in result.metrics]
    assert abs(kl_ref[0]) < 1e-6  # the first step samples the starting weights themselves
    assert any(abs(k) > 1e-6 for k in kl_ref[1:])  # later steps have moved away from them


def test_configs_refuse_bad_rl_settings_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown scorer 'nope'"):
        RLConfig(rewards=("nope",))
    with pytest.raises(ValueError, match="clip_low_threshold"):
        RLConfig(clip_low_threshold=1.5, clip_high_threshold=1.2)


# -- the JAX adapter: sampling from the training weights ---------------------------------


def test_learner_logprobs_of_sampled_tokens_equal_the_samplers(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", "llama")
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=4)))
    # Make LoRA B non-zero so the handed-over weights differ from the base model's.
    session.forward_backward([rollout_datum([0, 5], [6, 7, 8], [-1.0] * 3, 1.0)], "ppo")
    session.optim_step(AdamParams(learning_rate=0.05)).result()
    sampler = session.save_weights_and_get_sampling_client().result()
    tok = session.tokenizer
    prompts = [ModelInput.from_ints(tok.encode(p)) for p in ("the quick brown", "a galley")]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=5, ignore_eos=True)
    completions = sampler.complete_batch(prompts, params, num_samples=2)
    assert [len(c.sequences) for c in completions] == [2, 2]
    data, sampled = [], []
    for completion in completions:
        for seq in completion.sequences:
            data.append(rollout_datum(completion.prompt_tokens, seq.tokens, seq.logprobs, 1.0))
            sampled.append(seq.logprobs)
    learner = session.forward(data, "importance_sampling").result().logprobs
    for lp, seq_lp in zip(learner, sampled, strict=True):
        np.testing.assert_allclose(lp[-len(seq_lp) :], seq_lp, atol=1e-3)
    # The completer keeps the weights of its call: a later step does not change its samples.
    session.forward_backward(data, "importance_sampling")
    session.optim_step(AdamParams(learning_rate=0.05)).result()
    assert sampler.complete_batch(prompts, params, num_samples=2) == completions
    newer = session.save_weights_and_get_sampling_client().result()
    moved = newer.complete_batch(prompts, params, num_samples=2)
    assert moved[0].sequences[0].logprobs != completions[0].sequences[0].logprobs


def test_the_rl_pages_custom_reward_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "rl.md").read_text()
    rewards, usage = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert rewards.startswith("# my_rewards.py")
    (tmp_path / "my_rewards.py").write_text(rewards)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    exec(compile(usage, "docs/rl.md", "exec"), {"__name__": "rl_page"})
    reward, shouted = map(float, capsys.readouterr().out.split())
    assert 0.0 <= shouted <= 1.0 and reward >= shouted  # brief adds a positive term


def test_handing_weights_over_many_times_keeps_memory_bounded(tmp_path: Path) -> None:
    """Each completer holds its own merged kernels until dropped: after many handoffs the
    device holds no more arrays than after the first."""
    import gc

    import jax

    folder = make_model(tmp_path / "m", "llama")
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=4)))
    prompt = ModelInput.from_ints(session.tokenizer.encode("the quick"))
    params = SamplingParams(max_tokens=2, temperature=1.0, seed=1)

    def handoff() -> None:
        sampler = session.save_weights_and_get_sampling_client().result()
        sampler.complete_batch([prompt], params, num_samples=2)

    handoff()
    gc.collect()
    first = len(jax.live_arrays())
    for _ in range(40):
        handoff()
    gc.collect()
    assert len(jax.live_arrays()) <= first
