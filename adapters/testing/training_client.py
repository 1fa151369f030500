"""The TrainingClient contract: Tinker semantics any backend must keep.

Subclass it and define ``make_client(tmp_path)``, returning a client and a base model it can
train. Backend-specific facts (how fast the loss falls) are not asserted here; ordering,
accumulation, save/load and errors are."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from galley.adapters.testing.contract import Contract
from galley.core import (
    AdamParams,
    Datum,
    GalleyError,
    LoraConfig,
    SamplingParams,
    SessionConfig,
    ValidationError,
)
from galley.core.domain.model_input import ModelInput
from galley.core.domain.rl import rollout_datum
from galley.core.runs.manifest import CheckpointMismatchError
from galley.ports import Completer, TrainingClient, TrainingSession


def text_datum(session: TrainingSession, text: str) -> Datum:
    tokens = session.tokenizer.encode(text)
    return Datum.from_tokens(tokens, [1.0] * len(tokens))


class TrainingClientContract(Contract):
    port = "TrainingClient"

    def make_client(self, tmp_path: Path) -> tuple[TrainingClient, str]:
        raise NotImplementedError

    def make(self) -> tuple[TrainingClient, str]:
        return self.make_client(self.fresh_folder())

    def session(self, **kwargs: object) -> TrainingSession:
        """A new session of one client per test (sessions of a client share its storage)."""
        if not hasattr(self, "_client"):
            self._client, self._model = self.make()
        return self._client.start_session(SessionConfig(base_model=self._model, **kwargs))  # type: ignore[arg-type]

    def batch(self, session: TrainingSession) -> list[Datum]:
        return [text_datum(session, "the quick brown fox"), text_datum(session, "jumps over it")]

    def test_implements_the_port(self) -> None:
        """It has every method of the port; start_session returns a TrainingSession."""
        client, _ = self.make()
        assert isinstance(client, TrainingClient)
        assert isinstance(self.session(), TrainingSession)

    def test_tokenizer_round_trips_text(self) -> None:
        """The session's tokenizer decodes what it encodes; eos is in the vocabulary."""
        tok = self.session().tokenizer
        assert tok.decode(tok.encode("hello, world")) == "hello, world"
        assert 0 <= tok.eos_token_id < tok.vocab_size

    def test_requests_return_futures_and_logprobs_per_token(self) -> None:
        """Every request returns a Future at once; forward gives a logprob per token and
        loss:sum, the per-token sum of the loss."""
        s = self.session()
        data = self.batch(s)
        future = s.forward(data)
        assert isinstance(future, Future)
        out = future.result()
        assert [lp.shape for lp in out.logprobs] == [(d.model_input.length,) for d in data]
        assert all((lp <= 0).all() for lp in out.logprobs)
        expected = -sum(float(lp.sum()) for lp in out.logprobs)  # weights are all 1
        assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-5)

    def test_forward_does_not_train(self) -> None:
        """forward keeps no gradient: an optim_step after forwards alone changes nothing."""
        s = self.session()
        data = self.batch(s)
        first = s.forward(data).result().metrics["loss:sum"]
        s.forward(data).result()
        s.optim_step(AdamParams(learning_rate=1e-2)).result()  # no gradient accumulated
        assert s.forward(data).result().metrics["loss:sum"] == pytest.approx(first, rel=1e-6)

    def test_requests_run_in_submission_order(self) -> None:
        """Requests of a session execute in submission order: a forward submitted after an
        optim_step, without waiting, sees the updated weights."""
        s = self.session()
        data = self.batch(s)
        before = s.forward(data)
        s.forward_backward(data)
        step = s.optim_step(AdamParams(learning_rate=1e-2))
        after = s.forward(data)  # queued behind the update: sees the new weights
        assert step.result().step == 1
        assert after.result().metrics["loss:sum"] < before.result().metrics["loss:sum"]

    def test_gradients_accumulate_until_optim_step(self) -> None:
        """Gradients accumulate across forward_backward calls until optim_step: two calls on
        halves of a batch give the step of one call on the whole."""
        data_s1, data_s2 = self.session(), self.session()
        data = self.batch(data_s1)
        data_s1.forward_backward(data[:1])
        data_s1.forward_backward(data[1:])
        r1 = data_s1.optim_step(AdamParams(learning_rate=1e-3)).result()
        data_s2.forward_backward(data)
        r2 = data_s2.optim_step(AdamParams(learning_rate=1e-3)).result()
        assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-4)
        assert r1.grad_norm > 0 and r1.update_norm > 0

    def test_save_and_load_state_resumes_exactly(self) -> None:
        """load_state resumes exactly: the same steps after it give the same weights."""
        s = self.session()
        data = self.batch(s)
        s.forward_backward(data)
        s.optim_step(AdamParams(learning_rate=1e-3))
        ref = s.save_state("mid").result()
        assert ref.kind == "state" and ref.step == 1
        for _ in range(2):
            s.forward_backward(data)
            s.optim_step(AdamParams(learning_rate=1e-3))
        expected = s.forward(data).result().logprobs
        other = self.session()
        other.load_state(ref).result()
        for _ in range(2):
            other.forward_backward(data)
            other.optim_step(AdamParams(learning_rate=1e-3))
        got = other.forward(data).result().logprobs
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(e, g)

    def test_load_weights_starts_from_the_weights_alone(self) -> None:
        """load_weights: start from the weights of a state checkpoint or of sampler weights
        alone; the optimizer state and the step start anew."""
        trained = self.session()
        data = self.batch(trained)
        for _ in range(2):
            trained.forward_backward(data)
            trained.optim_step(AdamParams(learning_rate=1e-2))
        state = trained.save_state("warm").result()
        sampler = trained.save_weights_for_sampler("warm").result()
        expected = trained.forward(data).result().metrics["loss:sum"]
        fresh = self.session().forward(data).result().metrics["loss:sum"]
        assert expected != pytest.approx(fresh, rel=1e-6)  # two steps changed the weights
        for ref in (state, sampler):
            started = self.session()
            started.load_weights(ref).result()
            got = started.forward(data).result().metrics["loss:sum"]
            assert got == pytest.approx(expected, rel=1e-5), ref.kind
            started.forward_backward(data)
            assert started.optim_step(AdamParams(learning_rate=1e-2)).result().step == 1

    def test_load_weights_of_another_lora_shape_is_refused_naming_both(self) -> None:
        """load_weights: weights of another LoRA shape fail with ValidationError naming both;
        nothing is loaded."""
        from galley.core.domain.types import LoraConfig

        ref = self.session(lora=LoraConfig(rank=8)).save_state("rank-8").result()
        other = self.session(lora=LoraConfig(rank=4))
        data = self.batch(other)
        before = other.forward(data).result().metrics["loss:sum"]
        with pytest.raises(ValidationError, match=r"(?s)8.*4"):
            other.load_weights(ref).result()
        assert other.forward(data).result().metrics["loss:sum"] == pytest.approx(before)

    def test_checkpoints_say_which_run_and_step_they_are(self) -> None:
        """save_state stamps the session's run id, the name and the step on the ref."""
        s = self.session(run_id="run-a")
        s.forward_backward(self.batch(s))
        s.optim_step(AdamParams(learning_rate=1e-3))
        ref = s.save_state("one").result()
        assert (ref.run_id, ref.name, ref.step) == ("run-a", "one", 1)
        sampler = s.save_weights_for_sampler("final").result()
        assert (sampler.run_id, sampler.step) == ("run-a", 1)

    @pytest.mark.parametrize("field", ["run_id", "name", "step"])
    def test_load_state_refuses_a_checkpoint_that_is_not_the_one_asked_for(
        self, field: str
    ) -> None:
        """load_state refuses a checkpoint whose manifest is not the ref's (a folder copied
        over another, an index line pointing into another run) with CheckpointMismatchError
        before anything is loaded."""
        s = self.session(run_id="run-a")
        ref = s.save_state("one").result()
        changed: dict[str, Any] = {"run_id": "run-b", "name": "two", "step": 7}
        other = attrs.evolve(ref, **{field: changed[field]})
        with pytest.raises(CheckpointMismatchError, match=f"not state .* of run '{other.run_id}'"):
            self.session(run_id="run-b").load_state(other).result()

    def test_sampler_export_gives_a_sampler_ref(self) -> None:
        """save_weights_for_sampler returns a sampler ref with the name given."""
        s = self.session()
        ref = s.save_weights_for_sampler("final").result()
        assert ref.kind == "sampler" and ref.name == "final"

    def test_sampling_client_samples_the_weights_as_of_its_call(self) -> None:
        """save_weights_and_get_sampling_client gives a Completer of the weights as of the
        call: its sampled tokens' logprobs are the learner's (temperature 1, no filter), and
        a later optim_step does not change what it samples."""
        session = self.session(lora=LoraConfig(rank=2))
        tok = session.tokenizer
        sampler = session.save_weights_and_get_sampling_client().result()
        assert isinstance(sampler, Completer)
        prompt = ModelInput.from_ints(tok.encode("the quick brown"))
        params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, ignore_eos=True)
        [completion] = sampler.complete_batch([prompt], params, num_samples=2)
        assert len(completion.sequences) == 2
        data = [
            rollout_datum(completion.prompt_tokens, seq.tokens, seq.logprobs, 1.0)
            for seq in completion.sequences
        ]
        learner = session.forward(data, "importance_sampling").result().logprobs
        for lp, seq in zip(learner, completion.sequences, strict=True):
            np.testing.assert_allclose(lp[-len(seq.tokens) :], seq.logprobs, atol=1e-3)
        session.forward_backward(data, "importance_sampling")
        session.optim_step(AdamParams(learning_rate=0.1)).result()
        assert sampler.complete_batch([prompt], params, num_samples=2) == [completion]

    def test_invalid_requests_raise_at_submission(self) -> None:
        """Invalid arguments raise ValidationError at submission."""
        s = self.session()
        data = self.batch(s)
        with pytest.raises(ValidationError, match="unknown loss"):
            s.forward_backward(data, "mse")
        with pytest.raises(ValidationError, match="advantages"):
            s.forward_backward(data, "ppo")
        with pytest.raises(ValidationError, match="vocabulary"):
            s.forward([Datum.from_tokens([1, s.tokenizer.vocab_size + 5], [1.0, 1.0])])
        with pytest.raises(ValidationError, match="name"):
            s.save_state("../escape")

    def test_closed_session_refuses_requests(self) -> None:
        """A closed session refuses requests."""
        s = self.session()
        s.close()
        with pytest.raises(GalleyError, match="closed"):
            s.forward(self.batch(s))
