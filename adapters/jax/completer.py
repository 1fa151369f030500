"""The JAX Completer: prefill, then a compiled decode loop over a KV cache that grows in a few
static phases (each attends only to as many positions as its tokens need; the loop is
``generate.py``).

Prompts are left-padded into one batch (padding keys masked out); temperature, top-k, top-p
and stop token ids are traced inputs, so changing them never recompiles; shapes are bucketed.
Stop strings are applied on the host after decoding. Logprobs are the model's own
(temperature 1) log-probabilities of the chosen tokens, as training computes them.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.helpers.completing import BatchCompleter, prompt_token_ids
from galley.adapters.hf.model_files import SafetensorsReader, resolve_model_folder
from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.adapters.jax.batching import (
    DEFAULT_LENGTH_BUCKETS,
    batch_bucket,
    bucket,
    checked_buckets,
    checked_dtype,
)
from galley.adapters.jax.build import build_model
from galley.adapters.jax.compilation_cache import use_compilation_cache
from galley.adapters.jax.config import ModelConfig, expected_shapes, read_config
from galley.adapters.jax.generate import (
    MAX_STOP_IDS,
    MIN_DECODE_ROWS,
    Prompts,
    Sampling,
    generate,
)
from galley.adapters.jax.mesh import MeshShape, as_mesh_shape
from galley.adapters.jax.peft_export import peft_deltas
from galley.adapters.jax.sharding import Layout, to_host
from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ModelRef, SampledSequence, SamplingParams
from galley.core.errors import ConfigError, ValidationError
from galley.core.runs.manifest import read_checkpoint
from galley.ports.blobs import BlobStore
from galley.ports.hub import HubClient

Array = jax.Array


@attrs.frozen
class LoadedModel:
    graphdef: Any
    state: Any
    config: ModelConfig
    tokenizer: HFTokenizerAdapter


class JaxCompleter(BatchCompleter):
    """Samples from HF decoder models, optionally with sampler weights exported by the JAX
    TrainingClient (a PEFT adapter, merged in at load, or merged full weights). ``mesh``
    splits the weights over ``devices`` (default: this process's) as the training client's
    does: a model too big for one device samples split over several."""

    def __init__(
        self,
        hub: HubClient,
        blobs: BlobStore,
        *,
        model: str | None = None,
        dtype: str = "float32",
        length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
        compilation_cache_dir: str | None = None,
        max_models: int = 4,
        devices: Sequence[Any] | None = None,
        mesh: MeshShape | Mapping[str, Any] | None = None,
    ) -> None:
        if compilation_cache_dir is not None:
            use_compilation_cache(compilation_cache_dir)
        self.hub, self.blobs, self.default_model = hub, blobs, model
        self.dtype = checked_dtype(dtype, "JaxCompleter")
        self.length_buckets = checked_buckets(length_buckets, "JaxCompleter.length_buckets")
        if type(max_models) is not int or max_models < 1:
            raise ConfigError(f"JaxCompleter.max_models: expected at least 1, got {max_models!r}")
        self.max_models = max_models
        # This process's devices: in a run of several processes each samples on its own,
        # with no exchange between processes to keep in step with the training's.
        self.layout = Layout(as_mesh_shape(mesh), devices or jax.local_devices())
        # The models sampled from most recently (a base, its adapters): the oldest is dropped.
        self._models: OrderedDict[tuple[str, str | None], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._calls = 0

    # -- loading --------------------------------------------------------------------------

    def _load(self, ref: ModelRef | None) -> LoadedModel:
        if ref is None:
            if self.default_model is None:
                raise ValidationError(
                    "model", "no model given and the completer has no default model"
                )
            ref = ModelRef(self.default_model)
        cache_key = (ref.base_model, ref.adapter.key if ref.adapter else None)
        with self._lock:
            if cache_key in self._models:
                self._models.move_to_end(cache_key)
            else:
                self._models[cache_key] = self._build(ref)
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return self._models[cache_key]

    def _build(self, ref: ModelRef) -> LoadedModel:
        folder = resolve_model_folder(ref.base_model, self.hub)
        tokenizer_folder = folder
        with tempfile.TemporaryDirectory(prefix="galley-merged-") as merged:
            if ref.adapter is not None:
                manifest, files = read_checkpoint(self.blobs, ref.adapter)
                if manifest.meta.get("format") == "merged":  # read from a copy, removed after
                    folder = Path(merged)
                    for name, data in files.items():
                        (folder / name).write_bytes(data)
            cfg = read_config(folder)
            reader = SafetensorsReader(folder, expected_shapes(cfg))
            try:
                tensor: Any = reader
                if ref.adapter is not None and manifest.meta.get("format") != "merged":
                    cfg, tensor = _with_peft(cfg, reader, files)
                model = build_model(cfg, tensor, None, self.dtype, sampling_layout=True)
            finally:
                reader.close()
        graphdef, state = nnx.split(model)
        state = self.layout.place(state, cfg.family.sharding, transposed=True)
        tokenizer = HFTokenizerAdapter(tokenizer_folder, cfg.eos_token_ids, cfg.bos_token_id)
        return LoadedModel(graphdef, state, cfg, tokenizer)

    # -- sampling -------------------------------------------------------------------------

    def _encode(self, loaded: LoadedModel, prompt: str | ModelInput) -> list[int]:
        ids = prompt_token_ids(prompt, loaded.tokenizer.encode, loaded.tokenizer.bos_token_id)
        if max(ids) >= loaded.config.vocab_size:
            raise ValidationError("prompt", f"token id {max(ids)} is outside the vocabulary")
        return ids

    def _sample(
        self,
        prompts: Sequence[str | ModelInput],
        params: SamplingParams,
        model: ModelRef | None,
        num_samples: int,
    ) -> list[Completion]:
        loaded = self._load(model)
        encoded = [self._encode(loaded, p) for p in prompts]
        rows = [(i, s) for i in range(len(encoded)) for s in range(num_samples)]
        width = bucket(max(len(e) for e in encoded), self.length_buckets)
        new_tokens = bucket(
            max(params.max_tokens, 1), (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
        )
        if width + new_tokens > loaded.config.max_position_embeddings * 4:
            raise ValidationError("max_tokens", "prompt plus max_tokens exceed the model's context")
        _refuse_a_rope_switch(loaded.config, encoded, params.max_tokens)
        n, m = max(batch_bucket(len(rows), 1), MIN_DECODE_ROWS), batch_bucket(len(encoded), 1)
        tokens, mask = np.zeros((m, width), np.int32), np.zeros((m, width), bool)
        for i, ids in enumerate(encoded):
            tokens[i, width - len(ids) :], mask[i, width - len(ids) :] = ids, True
        mask[len(encoded) :, -1] = True  # padding rows attend to one key, avoiding an empty softmax
        row_prompts = np.zeros((n,), np.int32)  # padding rows continue prompt 0, unread
        row_prompts[: len(rows)] = [i for i, _ in rows]
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
        base = jax.random.key(seed)
        keys = jnp.stack([jax.random.fold_in(base, s) for _, s in rows] + [base] * (n - len(rows)))
        stops = list(params.stop_token_ids) + (
            []
            if params.ignore_eos
            else [loaded.tokenizer.eos_token_id, *loaded.config.eos_token_ids]
        )
        stop_ids = np.full((MAX_STOP_IDS,), -1, np.int32)
        stop_ids[: min(len(stops), MAX_STOP_IDS)] = stops[:MAX_STOP_IDS]
        out, out_lp, counts, prompt_lp = map(
            to_host,
            generate(
                loaded.graphdef,
                loaded.state,
                Prompts(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(row_prompts)),
                Sampling(
                    keys,
                    jnp.int32(params.max_tokens),
                    jnp.float32(params.temperature),
                    jnp.int32(params.top_k),
                    jnp.float32(params.top_p),
                    jnp.asarray(stop_ids),
                ),
                new_tokens=new_tokens,
                prompt_logprobs=params.include_prompt_logprobs,
            ),
        )
        completions = []
        for i, ids in enumerate(encoded):
            sequences = []
            for r in (r for r, (j, _) in enumerate(rows) if j == i):
                k = int(counts[r])
                sequences.append(
                    _finish(
                        loaded.tokenizer,
                        out[r, :k].tolist(),
                        out_lp[r, :k].tolist(),
                        params,
                        set(stops),
                    )
                )
            prompt_logprobs = None
            if params.include_prompt_logprobs:
                tail = prompt_lp[i, width - len(ids) + 1 :].tolist()
                prompt_logprobs = (None, *tail)
            completions.append(Completion(ids, sequences, prompt_logprobs))
        return completions

    def complete_batch(
        self,
        prompts: Sequence[str | ModelInput],
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> list[Completion]:
        return self._sample(prompts, params, model, num_samples) if prompts else []

    def stream(
        self, prompt: str | ModelInput, params: SamplingParams, *, model: ModelRef | None = None
    ) -> Iterator[str]:
        """Text pieces per generated token (the loop is compiled, so pieces come after it ends)."""
        completion = self.complete(prompt, params, model=model)
        seq, tok = completion.sequences[0], self._load(model).tokenizer
        emitted = ""
        for k in range(1, len(seq.tokens) + 1):
            text = tok.decode(seq.tokens[:k])
            if len(text) > len(emitted) and text.startswith(emitted) and len(text) <= len(seq.text):
                yield text[len(emitted) :]
                emitted = text
        if emitted != seq.text:
            yield seq.text[len(emitted) :]


def _finish(
    tokenizer: HFTokenizerAdapter,
    tokens: list[int],
    logprobs: list[float],
    params: SamplingParams,
    stop_ids: set[int],
) -> SampledSequence:
    """Apply stop strings on the host; text excludes the stop token or string."""
    stopped = bool(tokens) and tokens[-1] in stop_ids
    body = tokens[:-1] if stopped else tokens
    text = tokenizer.decode(body)
    if params.stop:
        hits = [(text.find(s), s) for s in params.stop if s in text]
        if hits:
            at = min(hits)[0]
            for k in range(1, len(body) + 1):  # fewest tokens whose text reaches the stop string
                if len(tokenizer.decode(body[:k])) >= at + 1 or at == 0:
                    break
            tokens, logprobs, text, stopped = tokens[:k], logprobs[:k], text[:at], True
    reason = "stop" if stopped else "length"
    return SampledSequence(tokens, logprobs, reason, text)  # type: ignore[arg-type]


def _with_peft(
    cfg: ModelConfig, reader: SafetensorsReader, files: dict[str, bytes]
) -> tuple[ModelConfig, Any]:
    """A tensor getter with a PEFT adapter folded into the base weights (W + B A alpha/r)."""
    deltas = peft_deltas(cfg, files)
    if "lm_head.weight" in deltas and cfg.tie_word_embeddings:
        cfg = attrs.evolve(
            cfg, tie_word_embeddings=False
        )  # the tuned head no longer equals the embedding

    def tensor(name: str) -> np.ndarray[Any, Any]:
        source = (
            "model.embed_tokens.weight"
            if name == "lm_head.weight" and name not in set(reader.names())
            else name
        )
        base = reader(source)
        return base + deltas[name] if name in deltas else base

    return cfg, tensor


def _refuse_a_rope_switch(cfg: ModelConfig, prompts: Sequence[list[int]], max_tokens: int) -> None:
    """LongRoPE rotates every position of a sequence by its long set once the sequence is
    longer than the original context, cached positions included (HF re-encodes its cache
    at that token). This sampler does not re-encode its cache, so a sequence crossing the
    boundary while it decodes is refused rather than sampled from keys rotated both ways."""
    limit = cfg.rope.original_max_position
    if cfg.rope.kind != "longrope":
        return
    for ids in prompts:
        if len(ids) <= limit < len(ids) + max_tokens:
            raise ValidationError(
                "max_tokens",
                f"a prompt of {len(ids)} tokens plus max_tokens {max_tokens} crosses the "
                f"model's original context ({limit} positions), where LongRoPE changes the "
                "rotation of every position; this sampler does not re-encode its cache there: "
                f"keep prompt plus max_tokens within {limit}, or the prompt beyond it",
            )
