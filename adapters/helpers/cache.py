"""A Completer that answers a request it has answered before from the BlobStore.

A request is cacheable when its answer is fixed by what it asks: greedy (temperature 0) or
seeded sampling, from weights with an identity. Weights have one when they are a checkpoint
(the SHA-256 of its manifest, which lists every blob's SHA-256) or a base model by name;
completers a training session hands over in memory are not wrapped, so never cached. The key
is the SHA-256 of a canonical JSON of (weights, prompt, sampling params, samples); the value
is the completion as JSON under ``cache/completer/``. Users: repeated evaluations of one
checkpoint, and a distillation's teacher asked the same prompts again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from galley.core.keys import join_key
from galley.core.manifest import MANIFEST_NAME
from galley.core.model_input import ModelInput
from galley.core.serialization import from_data, to_data
from galley.core.types import Completion, ModelRef, SamplingParams
from galley.ports.blobs import BlobStore
from galley.ports.completer import Completer

log = structlog.get_logger("galley")
PREFIX = "cache/completer"


class CachingCompleter:
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
        manifest = join_key(model.adapter.key, MANIFEST_NAME)
        if not self.blobs.exists(manifest):
            return None
        digest = hashlib.sha256(self.blobs.read(manifest)).hexdigest()
        return f"model:{model.base_model}+checkpoint:{digest}"

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

    def complete(
        self,
        prompt: str | ModelInput,
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> Completion:
        return self.complete_batch([prompt], params, model=model, num_samples=num_samples)[0]

    def stream(
        self, prompt: str | ModelInput, params: SamplingParams, *, model: ModelRef | None = None
    ) -> Iterator[str]:
        """Not cached: a stream is for watching a sample being made."""
        return self.inner.stream(prompt, params, model=model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
