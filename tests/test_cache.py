"""The caching Completer: a repeated greedy or seeded request is answered from the BlobStore;
another seed, other weights or unseeded sampling go to the completer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from galley.adapters.composition import build_adapters, parse_adapters_table
from galley.adapters.noop import NoopBlobStore, NoopTrainingClient
from galley.adapters.noop.completer import NoopCompleter
from galley.adapters.noop.training import NoopTrainingSession
from galley.adapters.wrappers.cache import CachingCompleter, CachingTrainingClient
from galley.core import AdamParams, Datum, ModelInput, SessionConfig
from galley.core.domain.types import CheckpointRef, Completion, ModelRef, SamplingParams
from galley.core.errors import ConfigError
from galley.core.runs.manifest import write_checkpoint
from galley.workflows.eval import EvalConfig
from galley.workflows.eval import run as run_eval
from galley.workflows.sft import SFTConfig
from galley.workflows.sft import run as run_sft


class Counting(NoopCompleter):
    def __init__(self) -> None:
        super().__init__(vary=0.5)
        self.asked: list[int] = []

    def complete_batch(
        self, prompts: Sequence[Any], params: SamplingParams, **kw: Any
    ) -> list[Completion]:
        self.asked.append(len(prompts))
        return super().complete_batch(prompts, params, **kw)


def sampler_at(blobs: NoopBlobStore, key: str, weights: bytes, run_id: str = "run") -> ModelRef:
    """Sampler weights ``weights`` saved at ``key`` (by run ``run_id``), as a ModelRef."""
    files = {"adapter_model.safetensors": weights}
    write_checkpoint(blobs, key, kind="sampler", name="final", run_id=run_id, step=1, files=files)
    return ModelRef("base", CheckpointRef("sampler", "final", key, run_id, 1, "base"))


def test_a_repeated_request_is_answered_from_the_store() -> None:
    inner, blobs = Counting(), NoopBlobStore()
    cached = CachingCompleter(inner, blobs)
    model = sampler_at(blobs, "runs/a/sampler/final", b"v1")
    seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=3)
    first = cached.complete_batch(["a", "b"], seeded, model=model, num_samples=2)
    assert cached.complete_batch(["a", "b"], seeded, model=model, num_samples=2) == first
    assert inner.asked == [2]
    # Only what is new is asked: one prompt of two.
    assert cached.complete_batch(["b", "c"], seeded, model=model, num_samples=2)[0] == first[1]
    assert inner.asked == [2, 1]
    # Another seed, other samples, or other weights (a changed manifest) miss.
    cached.complete_batch(["a"], SamplingParams(max_tokens=8, temperature=1.0, seed=4), model=model)
    cached.complete_batch(["a"], seeded, model=model, num_samples=3)
    # The same weights saved by another run are the same weights: a hit.
    again = sampler_at(blobs, "runs/b/sampler/final", b"v1", run_id="b")
    assert cached.complete_batch(["a"], seeded, model=again, num_samples=2)[0] == first[0]
    other = sampler_at(blobs, "runs/a/sampler/final", b"v2")
    cached.complete_batch(["a"], seeded, model=other, num_samples=2)
    assert inner.asked == [2, 1, 1, 1, 1]
    assert (cached.hits, cached.misses) == (4, 6)


def test_unseeded_sampling_and_weights_without_identity_are_never_cached() -> None:
    inner, blobs = Counting(), NoopBlobStore()
    cached = CachingCompleter(inner, blobs)
    unseeded = SamplingParams(max_tokens=4, temperature=1.0)
    cached.complete_batch(["a"], unseeded, model=ModelRef("base"))
    cached.complete_batch(["a"], unseeded, model=ModelRef("base"))
    gone = ModelRef("base", CheckpointRef("sampler", "x", "runs/none", "run", 1, "base"))
    greedy = SamplingParams(max_tokens=4, temperature=0.0)
    cached.complete_batch(["a"], greedy, model=gone)
    cached.complete_batch(["a"], greedy, model=gone)
    assert inner.asked == [1, 1, 1, 1] and not blobs.list("cache")
    cached.complete_batch(["a"], greedy, model=ModelRef("base"))  # a base model by name
    cached.complete_batch(["a"], greedy, model=ModelRef("base"))
    assert inner.asked == [1, 1, 1, 1, 1]


def test_a_second_identical_evaluation_asks_the_backends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    answer, forward = NoopCompleter.complete_batch, NoopTrainingSession.forward

    def counting_answers(self: NoopCompleter, prompts: Sequence[Any], *a: Any, **kw: Any) -> Any:
        calls.append("complete_batch")
        return answer(self, prompts, *a, **kw)

    def counting_forward(self: NoopTrainingSession, *a: Any, **kw: Any) -> Any:
        calls.append("forward")
        return forward(self, *a, **kw)

    monkeypatch.setattr(NoopCompleter, "complete_batch", counting_answers)
    monkeypatch.setattr(NoopTrainingSession, "forward", counting_forward)
    table = {
        "default": "noop",
        "completer": {"kind": "noop", "cache": True},
        "training": {"kind": "noop", "cache": True},
    }
    adapters = build_adapters(parse_adapters_table(table))
    run_sft(SFTConfig(max_steps=2, run_id="a", num_samples=0), adapters)
    run_sft(SFTConfig(max_steps=3, run_id="b", num_samples=0), adapters)
    calls.clear()
    first = run_eval(EvalConfig(run_id="e1", from_run="a"), adapters)
    assert {"forward", "complete_batch"} <= set(calls) and "eval/exact_match" in first.metrics
    calls.clear()
    second = run_eval(EvalConfig(run_id="e2", from_run="a"), adapters)
    assert calls == [] and second.metrics == first.metrics
    run_eval(EvalConfig(run_id="e3", from_run="b"), adapters)  # other weights: asked again
    assert "forward" in calls
    with pytest.raises(ConfigError, match="only the completer's answers and the training"):
        build_adapters(parse_adapters_table({"default": "noop", "blobs": {"cache": True}}))


def test_a_session_stops_caching_once_its_weights_move() -> None:
    blobs = NoopBlobStore()
    client = CachingTrainingClient(NoopTrainingClient(blobs), blobs)
    session = client.start_session(SessionConfig("galley/tiny-lm"))
    datum = Datum(ModelInput.from_ints([1, 2, 3]), {"target_tokens": np.array([2, 3, 4])})
    first = session.forward([datum]).result()
    assert session.forward([datum]).result() == first and session.hits == 1
    session.forward_backward([datum]).result()
    session.optim_step(AdamParams(learning_rate=0.1)).result()
    moved = session.forward([datum]).result()
    assert moved != first and (session.hits, session.misses) == (1, 1)
