"""Caching wrappers: a Completer (``CachingCompleter``) and a TrainingClient's ``forward``
(``CachingTrainingClient``) that answer a request they have answered before from the
BlobStore.

A request is cacheable when its answer is fixed by what it asks: greedy (temperature 0) or
seeded sampling, from weights with an identity. Weights have one when they are a checkpoint
(``weights_digest``: from its manifest's SHA-256 of every blob) or a base model by name;
completers a training session hands over in memory are not wrapped, so never cached. The key
is the SHA-256 of a canonical JSON of (weights, prompt, sampling params, samples); the value
is the completion as JSON under ``cache/completer/``. Users: repeated evaluations of one
checkpoint, and a distillation's teacher asked the same prompts again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import structlog

from galley.adapters.helpers.completing import BatchCompleter
from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ForwardBackwardOutput, ModelRef, SamplingParams
from galley.core.errors import GalleyError
from galley.core.keys import join_key
from galley.core.runs.manifest import MANIFEST_NAME, read_manifest
from galley.core.serialization import from_data, to_data
from galley.ports.blobs import BlobStore
from galley.ports.completer import Completer

log = structlog.get_logger("galley")
PREFIX = "cache/completer"


def weights_digest(blobs: BlobStore, key: str) -> str | None:
    """The identity of the checkpoint at ``key``: the SHA-256 of its manifest's list of blob
    digests (not of the whole manifest, which also names the run that saved it, so the same
    weights saved by two runs are one identity); None without a readable manifest."""
    try:
        manifest = read_manifest(blobs, join_key(key, MANIFEST_NAME))
    except GalleyError:
        return None
    files = {name: [d.size, d.sha256] for name, d in manifest.files.items()}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


class CachingCompleter(BatchCompleter):
    def __init__(self, inner: Completer, blobs: BlobStore, prefix: str = PREFIX) -> None:
        self.inner, self.blobs, self.prefix = inner, blobs, prefix
        self.hits = self.misses = 0

    def _weights(self, model: ModelRef | None) -> str | None:
        """The weights' identity, or None where they have none (not cached)."""
        if model is None:
            default = getattr(self.inner, "model", None)
            return f"model:{default}" if isinstance(default, str) else None
        if model.adapter is None:
            return f"model:{model.base_model}"
        digest = weights_digest(self.blobs, model.adapter.key)
        return None if digest is None else f"model:{model.base_model}+weights:{digest}"

    def _key(
        self, weights: str, prompt: str | ModelInput, params: SamplingParams, samples: int
    ) -> str:
        asked = prompt if isinstance(prompt, str) else {"tokens": prompt.to_ints()}
        text = json.dumps(
            {"weights": weights, "prompt": asked, "params": to_data(params), "samples": samples},
            sort_keys=True,
        )
        return join_key(self.prefix, hashlib.sha256(text.encode()).hexdigest() + ".json")

    def complete_batch(
        self,
        prompts: Sequence[str | ModelInput],
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> list[Completion]:
        weights = self._weights(model)
        if weights is None or (params.temperature > 0 and params.seed is None):
            return self.inner.complete_batch(prompts, params, model=model, num_samples=num_samples)
        keys = [self._key(weights, p, params, num_samples) for p in prompts]
        found: dict[int, Completion] = {}
        for i, key in enumerate(keys):
            if self.blobs.exists(key):
                found[i] = from_data(Completion, json.loads(self.blobs.read(key)))
        missing = [i for i in range(len(prompts)) if i not in found]
        if missing:
            asked = [prompts[i] for i in missing]
            answers = self.inner.complete_batch(asked, params, model=model, num_samples=num_samples)
            for i, answer in zip(missing, answers, strict=True):
                self.blobs.write(keys[i], json.dumps(to_data(answer)).encode())
                found[i] = answer
        self.hits, self.misses = self.hits + len(prompts) - len(missing), self.misses + len(missing)
        log.debug("completer.cache", hits=len(prompts) - len(missing), misses=len(missing))
        return [found[i] for i in range(len(prompts))]

    def stream(
        self, prompt: str | ModelInput, params: SamplingParams, *, model: ModelRef | None = None
    ) -> Iterator[str]:
        """Not cached: a stream is for watching a sample being made."""
        return self.inner.stream(prompt, params, model=model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CachingTrainingClient:
    """A TrainingClient whose sessions answer a ``forward`` they have answered before from
    the BlobStore, while their weights have an identity: a fresh session's are its base
    model's with the LoRA it starts (B = 0: the base model's outputs), a loaded checkpoint's
    are its manifest's SHA-256; an ``optim_step`` takes the identity away. Users: the same
    checkpoint evaluated again (held-out NLL is a ``forward``)."""

    def __init__(self, inner: Any, blobs: BlobStore, prefix: str = "cache/forward") -> None:
        self.inner, self.blobs, self.prefix = inner, blobs, prefix

    def start_session(self, config: Any) -> CachingSession:
        lora = config.lora
        fresh = f"model:{config.base_model}+lora:{lora.rank}/{lora.alpha}/{lora.seed}"
        return CachingSession(self.inner.start_session(config), self, fresh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CachingSession:
    def __init__(self, inner: Any, client: CachingTrainingClient, identity: str | None) -> None:
        self.inner, self.client, self.identity = inner, client, identity
        self.hits = self.misses = 0

    def _loaded(self, ref: Any) -> str | None:
        digest = weights_digest(self.client.blobs, ref.key)
        return None if digest is None else f"weights:{digest}"

    def load_state(self, ref: Any) -> Any:
        self.identity = self._loaded(ref)
        return self.inner.load_state(ref)

    def load_weights(self, ref: Any) -> Any:
        self.identity = self._loaded(ref)
        return self.inner.load_weights(ref)

    def optim_step(self, params: Any) -> Any:
        self.identity = None  # the weights move
        return self.inner.optim_step(params)

    def forward(
        self, data: Sequence[Any], loss_fn: str = "cross_entropy", config: Any = None
    ) -> Any:
        if self.identity is None:
            return self.inner.forward(data, loss_fn, config)
        asked = {
            "weights": self.identity,
            "data": to_data(list(data)),
            "loss": loss_fn,
            "config": config,
        }
        digest = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
        key = join_key(self.client.prefix, digest + ".json")
        blobs = self.client.blobs
        if blobs.exists(key):
            self.hits += 1
            done: Future[ForwardBackwardOutput] = Future()
            done.set_result(from_data(ForwardBackwardOutput, json.loads(blobs.read(key))))
            return done
        self.misses += 1
        future = self.inner.forward(data, loss_fn, config)

        def keep(finished: Future[ForwardBackwardOutput]) -> None:
            if finished.exception() is None:
                blobs.write(key, json.dumps(to_data(finished.result())).encode())

        future.add_done_callback(keep)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
