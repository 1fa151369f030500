"""The JAX TrainingClient: LoRA or full fine-tuning of HF decoder models with Flax NNX + Optax.

Each operation is one pure jitted function of (trainable, frozen, optimizer state, batch):
only trainable parameters get gradients and optimizer state; replaced buffers are donated;
hyperparameters (LR, betas, clipping) are traced inputs, so changing them never recompiles;
sequence lengths are padded to buckets. Parameters and batches live on a
``jax.sharding.Mesh`` (``sharding.py``): data-parallel over all local devices by default, or
split for FSDP and tensor parallelism by the model family's rules, with XLA's SPMD
partitioner placing the rest. Compiled steps are shared by sessions of the same model
shape. Sessions of one base model (LoRA or not) share its frozen weights in memory.
"""

from __future__ import annotations

import itertools
import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save as save_safetensors

from galley.adapters.helpers.request_queue import Deferred, RequestQueue
from galley.adapters.hf.model_files import SafetensorsReader, resolve_model_folder
from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.adapters.jax.batching import (
    DEFAULT_LENGTH_BUCKETS,
    PaddedBatch,
    checked_buckets,
    checked_dtype,
)
from galley.adapters.jax.build import build_model
from galley.adapters.jax.compilation_cache import use_compilation_cache
from galley.adapters.jax.config import ModelConfig, expected_shapes, read_config
from galley.adapters.jax.layers import fused_attention
from galley.adapters.jax.losses import checked_chunk
from galley.adapters.jax.mesh import MeshShape, as_mesh_shape
from galley.adapters.jax.model import (
    CausalLM,
    Remat,
    check_lora_rank,
    check_target_names,
    checked_remat,
)
from galley.adapters.jax.moe import checked_coef
from galley.adapters.jax.passes import PassResult, RowLayout, joined_output, request_passes
from galley.adapters.jax.peft_export import load_peft_adapter
from galley.adapters.jax.scan import per_layer, stack_layers, stacked, unrolled
from galley.adapters.jax.session_files import (
    check_state_checkpoint,
    lora_meta,
    sampler_files,
    saved_state,
    unflatten_like,
    write_checkpoint,
)
from galley.adapters.jax.session_sampler import WeightsCompleter, sampling_copy
from galley.adapters.jax.sharding import Layout, Pinned
from galley.adapters.jax.shared_base import SharedBase
from galley.adapters.jax.state_files import (
    STATE_FILE,
    flat_named,
    gathered_digests,
    local_parts,
    part_file,
)
from galley.adapters.jax.steps import (
    Pins,
    adamw,
    forward_backward_step,
    forward_step,
    hyper_arrays,
    optim_step,
)
from galley.core.domain.types import (
    AdamParams,
    CheckpointKind,
    CheckpointRef,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ModelInfo,
    OptimStepResult,
    SessionConfig,
)
from galley.core.errors import ValidationError
from galley.core.keys import check_name, join_key
from galley.core.runs.manifest import BlobDigest, read_checkpoint
from galley.ports.blobs import BlobStore
from galley.ports.hub import HubClient

# How long a session of a distributed run waits for its worker when it closes.
STUCK_WORKER_S = 1.0


def _count(tree: Any) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


class JaxTrainingSession:
    def __init__(self, client: JaxTrainingClient, config: SessionConfig, session_id: str) -> None:
        self.config, self._client, self._id = config, client, session_id
        self.folder = resolve_model_folder(config.base_model, client.hub)
        self.model_config: ModelConfig = read_config(self.folder)
        self._tokenizer: HFTokenizerAdapter | None = None  # read when first asked for
        lora = config.lora if config.lora.rank else None
        if lora is not None:
            check_target_names(lora)
            check_lora_rank(lora, self.model_config)
        reader = SafetensorsReader(self.folder, expected_shapes(self.model_config))
        try:
            model = build_model(self.model_config, reader, lora, client.dtype)
        finally:
            reader.close()
        self._rows = client.rows.for_model(self.model_config)
        self._layers = self.model_config.num_layers if client.scan_layers else 0
        if self._layers:
            stack_layers(model)
        model.remat = client.remat
        num_parameters = _count(nnx.state(model, nnx.Param))
        trainable_filter = nnx.LoRAParam if lora is not None else nnx.Param
        parts: tuple[Any, ...] = nnx.split(model, trainable_filter, ...)
        self._graphdef: Any = parts[0]
        trainable, frozen = parts[1], parts[2]
        self._trainable = self._on_mesh(trainable)
        # Held for the session's life: the client keeps the shared copy while any session does.
        self._base, self._frozen = client.shared_base(
            (str(self.folder), client.dtype.name), self._on_mesh(frozen)
        )
        self._restart_optimizer()
        self._step = 0
        self._queue = RequestQueue(f"jax-session-{session_id}")
        self._info = ModelInfo(
            name=config.base_model,
            vocab_size=self.model_config.vocab_size,
            max_context=self.model_config.max_position_embeddings,
            lora_rank=config.lora.rank,
            num_parameters=num_parameters,
            num_trainable_parameters=_count(self._trainable),
        )

    # -- port ---------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._id

    @property
    def tokenizer(self) -> HFTokenizerAdapter:
        """The model folder's tokenizer, read on first use: a folder without one still trains
        on token ids, and asking for it then names the missing file."""
        if self._tokenizer is None:
            cfg = self.model_config
            self._tokenizer = HFTokenizerAdapter(self.folder, cfg.eos_token_ids, cfg.bos_token_id)
        return self._tokenizer

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        request, batches = self._prepare(data, loss_fn, loss_fn_config)
        return self._queue.submit(lambda: self._run(request, batches, backward=False))

    def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        request, batches = self._prepare(data, loss_fn, loss_fn_config)
        return self._queue.submit(lambda: self._run(request, batches, backward=True))

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        return self._queue.submit(lambda: self._optim(params))

    def save_state(self, name: str) -> Future[CheckpointRef]:
        check_name(name, "save_state.name")
        return self._queue.submit(lambda: self._save_state(name))

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        if ref.kind != "state":
            raise ValidationError("load_state.ref", f"expected a state checkpoint, got {ref.kind}")
        return self._queue.submit(lambda: self._load_state(ref))

    def load_weights(self, ref: CheckpointRef) -> Future[None]:
        return self._queue.submit(lambda: self._load_weights(ref))

    def save_weights_and_get_sampling_client(self) -> Future[WeightsCompleter]:
        return self._queue.submit(self._sampling_client)

    def _model(self) -> CausalLM:
        """The session's model, unrolled (its layers a list, as exports read them)."""
        return unrolled(nnx.merge(self._graphdef, self._trainable, self._frozen))

    def _sampling_client(self) -> WeightsCompleter:
        model = self._model()
        client = self._client
        loaded = sampling_copy(
            model, self.model_config, self.tokenizer, client.dtype, client.layout
        )
        return WeightsCompleter(
            loaded,
            client.hub,
            client.blobs,
            dtype=client.dtype.name,
            length_buckets=client.length_buckets,
            layout=client.layout,
        )

    def save_weights_for_sampler(self, name: str) -> Future[CheckpointRef]:
        check_name(name, "save_weights_for_sampler.name")
        return self._queue.submit(
            lambda: self._save_sampler(name, merged=self.config.lora.rank == 0)
        )

    def save_merged_weights(self, name: str) -> Future[CheckpointRef]:
        """Export base + trained weights merged, as an HF model folder (config, tokenizer,
        model.safetensors) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads."""
        check_name(name, "save_merged_weights.name")
        return self._queue.submit(lambda: self._save_sampler(name, merged=True))

    def close(self) -> None:
        # Across processes, after another process died the worker may be stuck in an
        # exchange with it: a failed run must be able to end without it. An idle worker
        # (a run that ends well) stops at once, before the interpreter does.
        self._queue.close(timeout=None if jax.process_count() == 1 else STUCK_WORKER_S)

    # -- work (on the session's queue thread) ---------------------------------------------

    def _on_mesh(self, tree: Any) -> Any:
        """Parameters, or state that mirrors them, split over the mesh by the family's rules."""
        return self._client.layout.place(tree, self.model_config.family.sharding)

    def _restart_optimizer(self) -> None:
        self._opt_state = self._on_mesh(adamw().init(self._trainable))
        self._grads = self._on_mesh(jax.tree.map(jnp.zeros_like, self._trainable))
        layout = self._client.layout
        self._pins = Pins(
            Pinned(jax.tree.map(lambda a: a.sharding, self._trainable)),
            Pinned(jax.tree.map(lambda a: a.sharding, self._opt_state)),
            Pinned(layout.replicated) if jax.process_count() > 1 else None,
        )

    def _prepare(
        self, data: Sequence[Datum], loss_fn: str, config: Mapping[str, float] | None
    ) -> tuple[ForwardBackwardInput, list[PaddedBatch]]:
        """The request, checked, and the padded batches of its passes."""
        request = ForwardBackwardInput(tuple(data), loss_fn, dict(config or {}))
        request.check_vocabulary(self.model_config.vocab_size)
        return request, request_passes(request, self.config.micro_batch_size, self._rows)

    def _device_batch(self, batch: PaddedBatch) -> dict[str, jax.Array]:
        return self._client.layout.batch_arrays(batch.arrays())

    def _run(
        self, request: ForwardBackwardInput, batches: list[PaddedBatch], *, backward: bool
    ) -> Deferred[ForwardBackwardOutput]:
        """One pass per batch, in order; with ``backward`` each adds its gradient to the
        accumulator, so micro-batches sum to the whole request's gradient."""
        cfg = request.loss_fn_config
        clip = jnp.asarray(
            [cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2)], jnp.float32
        )
        how = {
            "loss": request.loss_fn,
            "clip": clip,
            "pins": self._pins,
            "logits_chunk": self._client.logits_chunk,
            "balance_coef": self._client.router_aux_loss_coef,
        }
        weights = (self._graphdef, self._trainable, self._frozen)  # passes change only grads
        results: list[PassResult] = []
        for batch in batches:
            if backward:
                value, logp, self._grads, metrics = forward_backward_step(
                    *weights, self._grads, self._device_batch(batch), **how
                )
            else:
                value, logp, metrics = forward_step(*weights, self._device_batch(batch), **how)
            results.append(PassResult(batch, value, logp, metrics))
        return Deferred(lambda: joined_output(request, results))

    def _optim(self, p: AdamParams) -> Deferred[OptimStepResult]:
        self._trainable, self._opt_state, self._grads, grad_norm, update_norm = optim_step(
            self._trainable, self._opt_state, self._grads, hyper_arrays(p), self._pins
        )
        self._step += 1
        step = self._step
        return Deferred(
            lambda: OptimStepResult(step, p.learning_rate, float(grad_norm), float(update_norm))
        )

    def _state_tree(self) -> dict[str, Any]:
        return {"trainable": self._trainable, "opt_state": self._opt_state, "grads": self._grads}

    def _ref(self, kind: CheckpointKind, name: str) -> CheckpointRef:
        prefix = join_key(self.config.storage_prefix, kind, name)
        return CheckpointRef(
            kind, name, prefix, self.config.run_id, self._step, self.config.base_model
        )

    def _save_state(self, name: str) -> CheckpointRef:
        """One file of whole tensors; across processes, one file of parts per process (each
        process calls this: the workflow runs in each), the manifest written by process 0
        once every file is."""
        ref = self._ref("state", name)
        written: dict[str, BlobDigest] = {}
        if jax.process_count() == 1:
            named = flat_named(self._state_tree())
            files = {STATE_FILE: save_safetensors(per_layer(named, self._layers))}
        else:
            mine = part_file(jax.process_index(), jax.process_count())
            data = local_parts(self._state_tree(), self._layers)
            self._client.blobs.write(join_key(ref.key, mine), data)
            digests = gathered_digests(data)  # returns once every process has written
            written = {part_file(i, len(digests)): d for i, d in enumerate(digests)}
            files = {}
        meta = {
            "base_model": self.config.base_model,
            "lora": json.dumps(lora_meta(self.config.lora)),
        }
        write_checkpoint(self._client.blobs, self.config, self._step, ref, files, meta, written)
        return ref

    def _load_state(self, ref: CheckpointRef) -> None:
        manifest, files = read_checkpoint(self._client.blobs, ref)
        check_state_checkpoint(manifest, files, ref, self.config.lora, "load_state")
        tree = saved_state(files, ref, self._state_tree(), self._layers)
        self._trainable = self._on_mesh(tree["trainable"])
        self._opt_state = self._on_mesh(tree["opt_state"])
        self._grads = self._on_mesh(tree["grads"])
        self._step = manifest.step

    def _load_weights(self, ref: CheckpointRef) -> None:
        """Weights only, from a state checkpoint or a PEFT export; the optimizer starts anew."""
        manifest, files = read_checkpoint(self._client.blobs, ref)
        base = manifest.meta.get("base_model", self.config.base_model)
        if base != self.config.base_model:
            raise ValidationError(
                "load_weights",
                f"checkpoint {ref.key!r} is of base model {base!r}; this session's is "
                f"{self.config.base_model!r}",
            )
        if ref.kind == "state":
            check_state_checkpoint(manifest, files, ref, self.config.lora, "load_weights")
            trainable = saved_state(files, ref, self._state_tree(), self._layers)["trainable"]
        elif manifest.meta.get("format") == "peft" and self.config.lora.rank:
            model = self._model()
            load_peft_adapter(model, files, self.config, ref.key)
            named = flat_named(nnx.state(model, nnx.LoRAParam))
            if self._layers:
                named = stacked(named, self._trainable, self._layers)
            trainable = unflatten_like(self._trainable, named, f"adapter {ref.key!r}")
        else:
            raise ValidationError(
                "load_weights",
                f"{ref.key!r} holds {manifest.meta.get('format', 'unknown')} sampler weights; "
                "a session starts from a state checkpoint, or from a PEFT adapter when it "
                "trains a LoRA of the same shape",
            )
        self._trainable = self._on_mesh(trainable)
        self._restart_optimizer()
        self._step = 0

    def _save_sampler(self, name: str, *, merged: bool) -> CheckpointRef:
        ref = self._ref("sampler", name)
        files, kind = sampler_files(self._model(), self.config, self.folder, merged=merged)
        meta = {"format": kind, "base_model": self.config.base_model}
        write_checkpoint(self._client.blobs, self.config, self._step, ref, files, meta)
        return ref


class JaxTrainingClient:
    """Sessions on HF decoder models; base models come through the HubClient (or a local
    directory), checkpoints and exports go through the BlobStore. ``mesh`` splits the
    ``devices`` (default: every device, of every process in a distributed run) into data,
    FSDP and tensor-parallel axes. ``packing``, ``remat`` and ``logits_chunk`` trade memory
    and padding for time, never results (docs/jax-adapter.md). ``router_aux_loss_coef``
    adds a mixture of experts' load-balancing loss to its loss (it is reported either way)."""

    def __init__(
        self,
        hub: HubClient,
        blobs: BlobStore,
        *,
        dtype: str = "float32",
        length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
        devices: Sequence[Any] | None = None,
        mesh: MeshShape | Mapping[str, Any] | None = None,
        compilation_cache_dir: str | None = None,
        scan_layers: bool = False,
        packing: bool | None = None,
        remat: Remat | str = Remat.NONE,
        logits_chunk: int = 0,
        router_aux_loss_coef: float = 0.0,
    ) -> None:
        if compilation_cache_dir is not None:
            use_compilation_cache(compilation_cache_dir)
        self.hub, self.blobs = hub, blobs
        self.scan_layers = scan_layers  # see scan.py: compile time flat in depth
        self.dtype = checked_dtype(dtype, "JaxTrainingClient")
        # Rows of several datums attend with segment ids, which the fused GPU kernel does not
        # take: they are the default where it does not run, and packing is opt-in there.
        several = fused_attention(self.dtype) is None
        self.remat = checked_remat(remat, "JaxTrainingClient.remat")
        self.logits_chunk = checked_chunk(logits_chunk, "JaxTrainingClient.logits_chunk")
        self.router_aux_loss_coef = checked_coef(
            router_aux_loss_coef, "JaxTrainingClient.router_aux_loss_coef"
        )
        self.length_buckets = checked_buckets(length_buckets, "JaxTrainingClient.length_buckets")
        self.layout = Layout(as_mesh_shape(mesh), devices)
        self.rows = RowLayout(
            self.length_buckets,
            self.layout.batch_rows,
            share_heads=several,
            packing=several if packing is None else packing,
        )
        self._ids = itertools.count(1)
        self._bases: weakref.WeakValueDictionary[tuple[str, str], SharedBase] = (
            weakref.WeakValueDictionary()
        )
        self._bases_lock = threading.Lock()

    def start_session(self, config: SessionConfig) -> JaxTrainingSession:
        return JaxTrainingSession(self, config, f"jax-{next(self._ids)}")

    def shared_base(self, key: tuple[str, str], frozen: Any) -> tuple[SharedBase, Any]:
        """``frozen`` with each array a session of the same base (``key``: folder, dtype)
        already holds swapped for that one, so the base is in memory once; the new arrays are
        dropped. Frozen arrays are never written, so sharing them is safe."""
        with self._bases_lock:
            base = self._bases.get(key)
            if base is None:
                base = self._bases[key] = SharedBase()
            return base, base.adopt(frozen)
