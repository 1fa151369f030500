"""DPO: losses and metrics against a numpy reference, preference rows in TRL's formats, pair
rendering, the gradient through the linearisation on the JAX adapter, and the workflow on
noop adapters (reference log-probabilities saved once and checked on resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from galley.adapters.cli import main
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient, noop_adapters
from galley.adapters.noop.tokenizer import ByteTokenizer
from galley.core import (
    AdamParams,
    Adapters,
    ConfigError,
    Datum,
    LoraConfig,
    SessionConfig,
    WorkflowError,
)
from galley.core.configs import plain_settings
from galley.core.domain.chat import Conversation, Message, TrainOn
from galley.core.domain.dpo import PairLogprobs, PreferenceObjective, pair_loss, preference_metrics
from galley.core.domain.preferences import (
    SIDES,
    AnswerLogprobs,
    PreferencePair,
    RenderedPair,
    pair_datums,
    preference_gradient,
    render_pair,
    row_to_pair,
)
from galley.core.domain.rendering import DoesNotFitError, RoleColonRenderer
from galley.core.errors import DataError, ValidationError
from galley.core.keys import join_key
from galley.core.runs.layout import REFERENCE_NAME
from galley.core.serialization import from_data
from galley.core.stages.dpo.reference import ReferenceLogprobs, reference_document
from galley.workflows.dpo import DPOConfig, run
from tests.hf_models import make_model

# -- the loss against a numpy reference ----------------------------------------------------


def numpy_loss(p: dict[str, np.ndarray], objective: PreferenceObjective) -> float:
    """The mean loss written out pair by pair, as TRL's DPOTrainer defines it."""
    beta, eps = objective.beta, objective.label_smoothing
    losses = []
    for i in range(len(p["chosen"])):
        chosen = p["chosen"][i] - p["ref_chosen"][i]
        rejected = p["rejected"][i] - p["ref_rejected"][i]
        if objective.loss_type == "ipo":
            gap = chosen / p["chosen_tokens"][i] - rejected / p["rejected_tokens"][i]
            losses.append((gap - 1 / (2 * beta)) ** 2)
        else:
            h = beta * (chosen - rejected)
            log_sig = -math.log1p(math.exp(-h)) if h > -30 else h
            log_sig_neg = -math.log1p(math.exp(h)) if h < 30 else -h
            losses.append(-(1 - eps) * log_sig - eps * log_sig_neg)
    return float(np.mean(losses))


objectives = st.one_of(
    st.builds(
        PreferenceObjective,
        st.just("sigmoid"),
        st.floats(0.01, 2.0),
        st.sampled_from([0.0, 0.1, 0.3]),
    ),
    st.builds(PreferenceObjective, st.just("ipo"), st.floats(0.01, 2.0), st.just(0.0)),
)


@st.composite
def scored_pairs(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(1, 6))
    logps = st.lists(st.floats(-60.0, -0.01), min_size=n, max_size=n)
    counts = st.lists(st.integers(1, 20).map(float), min_size=n, max_size=n)
    keys = ("chosen", "rejected", "ref_chosen", "ref_rejected")
    values = {k: np.array(draw(logps)) for k in keys}
    return values | {k: np.array(draw(counts)) for k in ("chosen_tokens", "rejected_tokens")}


@settings(max_examples=80, deadline=None)
@given(scored_pairs(), objectives)
def test_loss_and_gradient_match_a_numpy_reference(
    p: dict[str, np.ndarray], objective: PreferenceObjective
) -> None:
    loss, d_chosen, d_rejected = pair_loss(PairLogprobs(**p), objective)
    assert loss == pytest.approx(numpy_loss(p, objective), rel=1e-9, abs=1e-12)
    step = 1e-4
    for side, grad in (("chosen", d_chosen), ("rejected", d_rejected)):
        for i in range(len(grad)):
            up, down = {k: v.copy() for k, v in p.items()}, {k: v.copy() for k, v in p.items()}
            up[side][i] += step
            down[side][i] -= step
            numeric = (numpy_loss(up, objective) - numpy_loss(down, objective)) / (2 * step)
            assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_metrics_are_trls_and_a_tie_is_not_accurate() -> None:
    objective = PreferenceObjective("sigmoid", beta=0.5)
    pairs = PairLogprobs(
        chosen=[-1.0, -4.0, -2.0],
        rejected=[-3.0, -2.0, -2.0],
        ref_chosen=[-2.0, -2.0, -2.0],
        ref_rejected=[-2.0, -2.0, -2.0],
        chosen_tokens=[1, 1, 1],
        rejected_tokens=[1, 1, 1],
    )
    metrics = preference_metrics(pairs, objective)
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * (1 - 2 + 0) / 3)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * (-1 + 0 + 0) / 3)
    assert metrics["rewards/accuracies"] == pytest.approx(1 / 3)  # the tie counts as a failure
    assert metrics["rewards/margins"] == pytest.approx(0.5 * (2 - 2 + 0) / 3)
    assert metrics["logps/chosen"] == pytest.approx(-7 / 3)
    assert metrics["logps/rejected"] == pytest.approx(-7 / 3)
    assert metrics["loss"] == pytest.approx(numpy_loss(vars_of(pairs), objective))


def vars_of(pairs: PairLogprobs) -> dict[str, np.ndarray]:
    return {f.name: getattr(pairs, f.name) for f in attrs.fields(PairLogprobs)}


def test_objectives_and_scores_refuse_bad_settings_by_name() -> None:
    with pytest.raises(ValidationError, match="label_smoothing.*sigmoid loss only"):
        PreferenceObjective("ipo", 0.1, 0.2)
    with pytest.raises(ValidationError, match="beta"):
        PreferenceObjective("sigmoid", 0.0)
    with pytest.raises(ValidationError, match="loss_type"):
        PreferenceObjective("hinge")
    with pytest.raises(ValidationError, match=r"PairLogprobs.rejected.*one per pair"):
        PairLogprobs([-1.0], [-1.0, -2.0], [-1.0], [-1.0], [1], [1])


# -- preference rows ---------------------------------------------------------------------

EXPECTED = PreferencePair(
    Conversation([Message("user", "Shout this: blue boat")]),
    Message("assistant", "BLUE BOAT"),
    Message("assistant", "blue boat"),
)


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Shout this: blue boat", "chosen": "BLUE BOAT", "rejected": "blue boat"},
        {
            "prompt": [{"role": "user", "content": "Shout this: blue boat"}],
            "chosen": [{"role": "assistant", "content": "BLUE BOAT"}],
            "rejected": [{"role": "assistant", "content": "blue boat"}],
        },
        {
            "chosen": [
                {"role": "user", "content": "Shout this: blue boat"},
                {"role": "assistant", "content": "BLUE BOAT"},
            ],
            "rejected": [
                {"role": "user", "content": "Shout this: blue boat"},
                {"role": "assistant", "content": "blue boat"},
            ],
        },
        {
            "chosen": "Shout this: blue boat BLUE BOAT",
            "rejected": "Shout this: blue boat blue boat",
        },
    ],
    ids=["standard", "conversational", "implicit-conversational", "implicit-standard"],
)
def test_every_trl_preference_format_reads_as_the_same_pair(row: dict[str, Any]) -> None:
    assert row_to_pair(row, source="prefs.jsonl", index=0) == EXPECTED


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"prompt": "p", "chosen": "a"}, r"row 4, field 'rejected': missing"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, r"field 'chosen': expected a list"),
        (
            {"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            r"field 'chosen': expected one assistant message",
        ),
        ({"chosen": "abc", "rejected": "xyz"}, r"field 'prompt': missing, and chosen and rejected"),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "q"}],
            },
            r"field 'rejected': expected the messages after the shared prompt",
        ),
    ],
)
def test_a_malformed_preference_row_is_refused_naming_row_and_field(
    row: dict[str, Any], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        row_to_pair(row, source="prefs.jsonl", index=3)


# -- rendering ------------------------------------------------------------------------------

texts = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(texts, texts, texts, st.integers(4, 80), st.sampled_from(["keep_end", "keep_start"]))
def test_a_rendered_pair_weights_exactly_its_answers(
    prompt: str, chosen: str, rejected: str, max_length: int, truncation: str
) -> None:
    tok = ByteTokenizer()
    renderer = RoleColonRenderer(tok)
    pair = PreferencePair(
        Conversation([Message("user", prompt)]),
        Message("assistant", chosen),
        Message("assistant", rejected),
    )
    full = {s: renderer.render(pair.side(s), TrainOn.LAST_ASSISTANT_MESSAGE) for s in SIDES}
    try:
        rendered = render_pair(renderer, pair, max_length, truncation)
    except DoesNotFitError:
        assert max(e.model_input.length for e in full.values()) - 1 > max_length
        return
    starts = []
    for datum, answer in ((rendered.chosen, chosen), (rendered.rejected, rejected)):
        assert datum.model_input.length <= max_length
        weights = datum.loss_fn_inputs["weights"].data
        targets = datum.loss_fn_inputs["target_tokens"].data
        assert set(np.unique(weights)) <= {0.0, 1.0}
        answer_ids = [*tok.encode(f" {answer}"), tok.eos_token_id]
        trained = targets[weights > 0].tolist()
        first = int(np.flatnonzero(weights)[0])
        starts.append(first)
        if truncation == "keep_end":  # the whole answer, and only it, is weighted
            assert trained == answer_ids and weights[first:].all()
        else:  # the start of the answer that fits
            assert trained == answer_ids[: len(trained)] and trained
        assert not weights[:first].any()  # no prompt token is weighted
    if all(e.model_input.length - 1 <= max_length for e in full.values()):
        # Neither side was cut: both read the same prompt before their answers.
        tokens = [d.model_input.to_ints() for d in (rendered.chosen, rendered.rejected)]
        assert starts[0] == starts[1] and tokens[0][: starts[0]] == tokens[1][: starts[1]]


# -- the gradient through the linearisation ---------------------------------------------


def jax_preference_loss(
    pairs: list[RenderedPair],
    logprobs: list[jax.Array],
    reference: AnswerLogprobs,
    objective: PreferenceObjective,
) -> jax.Array:
    total = jnp.zeros(())
    for i, pair in enumerate(pairs):
        w_c = jnp.asarray(pair.chosen.loss_fn_inputs["weights"].data)
        w_r = jnp.asarray(pair.rejected.loss_fn_inputs["weights"].data)
        chosen = (logprobs[2 * i] * w_c).sum() - reference.chosen[i]
        rejected = (logprobs[2 * i + 1] * w_r).sum() - reference.rejected[i]
        if objective.loss_type == "ipo":
            gap = chosen / w_c.sum() - rejected / w_r.sum()
            total += (gap - 1 / (2 * objective.beta)) ** 2
        else:
            h = objective.beta * (chosen - rejected)
            eps = objective.label_smoothing
            total += -(1 - eps) * jax.nn.log_sigmoid(h) - eps * jax.nn.log_sigmoid(-h)
    return total / len(pairs)


@pytest.mark.parametrize(
    "objective",
    [PreferenceObjective("sigmoid", 0.5, 0.1), PreferenceObjective("ipo", 0.2)],
    ids=["sigmoid", "ipo"],
)
def test_the_linearised_step_gives_the_direct_gradient(
    tmp_path: Path, objective: PreferenceObjective
) -> None:
    folder = make_model(tmp_path / "m", "llama")
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=4)))
    session.forward_backward([Datum.from_tokens([0, 5, 6, 7], [0, 1, 1, 1])])
    session.optim_step(AdamParams(learning_rate=0.05)).result()  # make LoRA B non-zero
    session._grads = jax.tree.map(jnp.zeros_like, session._grads)  # type: ignore[attr-defined]
    tok = session.tokenizer
    renderer = RoleColonRenderer(tok)
    pairs = [
        render_pair(
            renderer,
            PreferencePair(
                Conversation([Message("user", prompt)]),
                Message("assistant", chosen),
                Message("assistant", rejected),
            ),
            64,
            "keep_end",
        )
        for prompt, chosen, rejected in (
            ("the quick", "brown fox", "lazy dog"),
            ("a", "galley", "ship"),
        )
    ]
    reference = AnswerLogprobs([-9.0, -4.0], [-11.0, -3.5])
    logprobs = session.forward(pair_datums(pairs)).result().logprobs
    data, metrics = preference_gradient(pairs, logprobs, reference, objective)
    session.forward_backward(data).result()
    linearised = jax.tree.map(np.asarray, session._grads)  # type: ignore[attr-defined]

    from galley.adapters.jax.batching import pad_batch
    from galley.adapters.jax.steps import forward_logprobs
    from galley.core import ForwardBackwardInput

    batch = pad_batch(ForwardBackwardInput(pair_datums(pairs)), client.length_buckets, 1)
    arrays = {k: jnp.asarray(v) for k, v in batch.arrays().items()}
    spans = np.split(batch.gather, np.cumsum(batch.lengths)[:-1])

    def direct(trainable: object) -> jax.Array:
        logp = forward_logprobs(
            session._graphdef,  # type: ignore[attr-defined]
            trainable,
            session._frozen,  # type: ignore[attr-defined]
            arrays,
        )
        per_datum = [logp.reshape(-1)[span] for span in spans]
        return jax_preference_loss(pairs, per_datum, reference, objective)

    value, grads = jax.value_and_grad(direct)(session._trainable)  # type: ignore[attr-defined]
    assert metrics["loss"] == pytest.approx(float(value), rel=1e-5)
    for a, b in zip(jax.tree.leaves(linearised), jax.tree.leaves(grads), strict=True):
        scale = float(np.abs(np.asarray(b)).max()) or 1.0
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))


# -- the workflow on noop adapters ------------------------------------------------------

TRL_METRICS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


def test_dpo_runs_on_noop_adapters_with_trls_metrics(adapters: Adapters) -> None:
    result = run(DPOConfig(max_steps=8, eval_every=4, run_id="d1"), adapters)
    assert result.steps == 8 and [m["step"] for m in result.metrics] == list(range(1, 9))
    assert all(TRL_METRICS | {"lr", "grad_norm"} <= set(m) for m in result.metrics)
    assert [e["step"] for e in result.eval] == [0, 4, 8]
    base = result.eval[0]
    assert {f"eval/{k}" for k in TRL_METRICS} <= set(base)
    # Before a step the policy is the reference: every reward is 0, every pair a tie.
    assert base["eval/rewards/chosen"] == 0.0 and base["eval/rewards/margins"] == 0.0
    assert base["eval/rewards/accuracies"] == 0.0
    assert base["eval/loss"] == pytest.approx(math.log(2))
    assert result.eval[-1]["eval/rewards/margins"] != 0.0  # the weights moved
    document = json.loads(adapters.blobs.read(join_key("runs", "d1", REFERENCE_NAME)))
    saved = document["reference"]
    assert len(saved["train"]["chosen"]) == len(saved["train"]["rejected"]) > 0
    assert saved["model"] == "galley/tiny-lm" and len(saved["fingerprint"]) == 64
    assert len(document["sha256"]) == 64
    assert result.sampler is not None


def test_a_resumed_run_reads_its_reference_back_and_refuses_another(adapters: Adapters) -> None:
    config = DPOConfig(max_steps=4, checkpoint_every=2, lr_schedule="constant", run_id="d2")
    run(config, adapters)
    key = join_key("runs", "d2", REFERENCE_NAME)
    with capture_logs() as logs:
        resumed = run(DPOConfig(**{**_settings(config), "max_steps": 6, "resume": True}), adapters)
    events = [e["event"] for e in logs]
    assert "reference.loaded" in events and "reference.computed" not in events
    assert [m["step"] for m in resumed.metrics] == list(range(1, 7))

    document = json.loads(adapters.blobs.read(key))
    saved = {**document["reference"], "model": "another/model"}
    adapters.blobs.write(key, reference_document(from_data(ReferenceLogprobs, saved)))
    with pytest.raises(WorkflowError, match="computed for other reference model"):
        run(DPOConfig(**{**_settings(config), "max_steps": 8, "resume": True}), adapters)

    # An edit of the numbers themselves (the digest left as it was) is found too.
    edited = json.loads(json.dumps(document))
    edited["reference"]["train"]["chosen"][0] += 1.0
    adapters.blobs.write(key, json.dumps(edited).encode())
    with pytest.raises(WorkflowError, match="do not match their SHA-256"):
        run(DPOConfig(**{**_settings(config), "max_steps": 8, "resume": True}), adapters)

    adapters.blobs.delete(key)
    with pytest.raises(WorkflowError, match="cannot be recomputed"):
        run(DPOConfig(**{**_settings(config), "max_steps": 8, "resume": True}), adapters)


def _settings(config: DPOConfig) -> dict[str, Any]:
    return plain_settings(config)


def test_an_explicit_reference_model_scores_the_pairs(adapters: Adapters) -> None:
    result = run(DPOConfig(max_steps=2, reference_model="other/model", run_id="d3"), adapters)
    saved = json.loads(adapters.blobs.read(join_key("runs", "d3", REFERENCE_NAME)))
    assert saved["reference"]["model"] == "other/model"
    # The noop model scores every model name alike: the start is still a tie.
    assert result.eval[0]["eval/rewards/accuracies"] == 0.0


def test_galley_run_dpo_on_a_local_file_of_standard_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI, HF `datasets` reading a local JSONL file, the noop training client."""
    monkeypatch.chdir(tmp_path)
    rows = [
        {"prompt": f"Shout this: {w}", "chosen": w.upper(), "rejected": w}
        for w in ("red", "blue", "green", "gold", "salt", "iron", "wind", "rain", "oak", "elm")
    ]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = ["dataset=prefs.jsonl", "eval_holdout=2", "batch_size=4", "run_id=cli-dpo"]
    args = ["run", "dpo", "--adapters", "noop", "--set", "adapters.datasets=hf"]
    assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    # eval_holdout 2, at most a tenth of 10 rows: 1 held out, 9 pairs in batches of 4
    assert "data: train 9 rows, held out 1 (eval_holdout)" in out
    assert "held-out rewards/accuracies" in out and "steps: 3" in out
    assert "galley://runs/cli-dpo/sampler/final" in out


def test_a_bad_row_in_a_preference_file_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["run", "dpo", "--adapters", "noop", "--set", "adapters.datasets=hf"]
    assert main([*args, "--set", "dataset=prefs.jsonl", "--set", "eval_holdout=1"]) == 2
    assert "row 2, field 'rejected': missing" in capsys.readouterr().err


def test_a_reference_model_that_tokenizes_otherwise_is_refused_naming_both() -> None:
    from tests.test_distill import TeacherTokenizerFor

    adapters = noop_adapters()
    adapters = adapters.replace(training=TeacherTokenizerFor(adapters.training, "other/model"))
    with pytest.raises(WorkflowError) as caught:
        run(DPOConfig(max_steps=2, reference_model="other/model", run_id="x"), adapters)
    assert isinstance(caught.value.__cause__, ConfigError)
    message = str(caught.value)
    assert "reference_model 'other/model' tokenizes otherwise than the trained model" in message
    assert "'galley/tiny-lm'" in message and "against the trained model's" in message
    assert not adapters.blobs.exists(join_key("runs", "x", REFERENCE_NAME))
