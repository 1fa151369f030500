"""The caching Completer: a repeated greedy or seeded request is answered from the BlobStore;
another seed, other weights or unseeded sampling go to the completer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from galley.adapters.composition import build_adapters, parse_adapters_table
from galley.adapters.helpers.cache import CachingCompleter
from galley.adapters.noop import NoopBlobStore
from galley.adapters.noop.completer import NoopCompleter
from galley.core.errors import ConfigError
from galley.core.keys import join_key
from galley.core.types import CheckpointRef, Completion, ModelRef, SamplingParams
from galley.workflows.eval import EvalConfig
from galley.workflows.eval import run as run_eval


class Counting(NoopCompleter):
    def __init__(self) -> None:
        super().__init__(vary=0.5)
        self.asked: list[int] = []

    def complete_batch(
        self, prompts: Sequence[Any], params: SamplingParams, **kw: Any
    ) -> list[Completion]:
        self.asked.append(len(prompts))
        return super().complete_batch(prompts, params, **kw)


def sampler_at(blobs: NoopBlobStore, key: str, manifest: bytes) -> ModelRef:
    blobs.write(join_key(key, "manifest.json"), manifest)
    return ModelRef("base", CheckpointRef("sampler", "final", key, "run", 1, "base"))


def test_a_repeated_request_is_answered_from_the_store() -> None:
    inner, blobs = Counting(), NoopBlobStore()
    cached = CachingCompleter(inner, blobs)
    model = sampler_at(blobs, "runs/a/sampler/final", b'{"files": "v1"}')
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
    other = sampler_at(blobs, "runs/a/sampler/final", b'{"files": "v2"}')
    cached.complete_batch(["a"], seeded, model=other, num_samples=2)
    assert inner.asked == [2, 1, 1, 1, 1]
    assert (cached.hits, cached.misses) == (3, 6)


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


def test_a_second_identical_evaluation_asks_the_completer_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    answer = NoopCompleter.complete_batch

    def counting(self: NoopCompleter, prompts: Sequence[Any], *a: Any, **kw: Any) -> Any:
        calls.append(len(prompts))
        return answer(self, prompts, *a, **kw)

    monkeypatch.setattr(NoopCompleter, "complete_batch", counting)
    table = {"default": "noop", "completer": {"kind": "noop", "cache": True}}
    adapters = build_adapters(parse_adapters_table(table))
    first = run_eval(EvalConfig(run_id="e1"), adapters)
    assert calls and "eval/exact_match" in first.metrics
    asked = len(calls)
    second = run_eval(EvalConfig(run_id="e2"), adapters)
    assert len(calls) == asked and second.metrics == first.metrics
    with pytest.raises(ConfigError, match="only the completer's answers are cached"):
        build_adapters(parse_adapters_table({"default": "noop", "blobs": {"cache": True}}))
