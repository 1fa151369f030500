"""What ``galley serve`` does for each Tinker endpoint, on galley's ports; no HTTP here.

Sessions, the models trained in them (one ``TrainingSession`` each, from the configured
TrainingClient) and the samplers made from them belong to the tenant of the key that made
them; every lookup is by tenant, so another tenant's things are not found. A session whose
heartbeats stop for ``session_timeout_s`` expires: its models are closed and its samplers
dropped, freeing their memory."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs
import structlog
from tinker import types as tt

from galley.adapters.hf.model_files import resolve_model_folder
from galley.adapters.serve import wire
from galley.adapters.serve.batcher import SampleBatcher, SampleJob
from galley.adapters.serve.catalog import RunCatalog, to_json
from galley.adapters.serve.errors import ApiError, bad_request, busy, not_found, unsupported
from galley.adapters.serve.requests import ModelQueue, Reply, RequestTable, settle
from galley.adapters.serve.runs import RunRecord, RunStore, TinkerPath, checkpoint_name
from galley.core.adapter_set import Adapters
from galley.core.errors import GalleyError
from galley.core.types import (
    CheckpointRef,
    LoraConfig,
    ModelRef,
    OptimStepResult,
    SessionConfig,
)
from galley.ports.completer import Completer
from galley.ports.training import TrainingSession

log = structlog.get_logger("galley.serve")
SEEN_SAMPLES = 1024  # per sampler: how far back a retried seq_id is recognised


@attrs.frozen
class ServeLimits:
    """Bounds that keep one client from exhausting the server (each refusal is a 4xx)."""

    max_body_bytes: int = 64 << 20  # 413 past this
    max_requests: int = 4096  # unfinished requests; 429 past this
    max_waiting_per_model: int = 256  # requests held for an earlier seq_id; 429 past this
    max_queued_samples: int = 256  # sampling requests queued; 429 past this
    max_samplers_per_model: int = 8  # ephemeral samplers kept per model (the newest)
    max_sessions_per_tenant: int = 256  # live sessions; 429 past this
    max_models_per_tenant: int = 16  # live models (each holds weights and optimizer state)
    poll_s: float = 20.0  # how long retrieve_future waits before "try again" (SDK: 45 s)
    session_timeout_s: float = 120.0  # no heartbeat for this long: the session expires
    keep_results_s: float = 600.0


@attrs.define(eq=False)
class Session:
    session_id: str
    tenant: str
    last_seen: float
    models: set[str] = attrs.field(factory=set)
    samplers: set[str] = attrs.field(factory=set)
    ended_at: float | None = None  # kept a while after, to answer 410 rather than 404

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


@attrs.define(eq=False)
class Model:
    model_id: str
    tenant: str
    session_id: str
    base_model: str
    lora: LoraConfig
    queue: ModelQueue
    training: Future[TrainingSession]  # resolves once the base model is loaded
    samplers: list[str] = attrs.field(factory=list)  # ephemeral ones, oldest first


@attrs.define(eq=False)
class Sampler:
    sampler_id: str
    tenant: str
    session_id: str
    base_model: str
    model_path: str | None
    completer: Completer
    model: ModelRef | None  # None: the completer's own weights (an ephemeral sampler)
    # The newest seq_ids' requests, so a retried one is not sampled again.
    seen: OrderedDict[int, tuple[str, list[str]]] = attrs.field(factory=OrderedDict)


Owned = TypeVar("Owned", Model, Sampler)


def _future(request_id: str, model_id: str | None = None) -> dict[str, Any]:
    return tt.UntypedAPIFuture(request_id=request_id, model_id=model_id).model_dump(
        mode="json", exclude_none=True
    )


class TinkerService:
    def __init__(
        self,
        adapters: Adapters,
        *,
        root: str = "runs/serve",
        models: tuple[str, ...] = ("galley/tiny-lm",),
        limits: ServeLimits = ServeLimits(),
    ) -> None:
        self.adapters, self.limits, self.models = adapters, limits, models
        self.runs = RunStore(adapters.blobs, root)
        self.catalog = RunCatalog(adapters.blobs, self.runs)
        self.requests = RequestTable(limits.max_requests, limits.keep_results_s)
        self._sessions: dict[str, Session] = {}
        self._models: dict[str, Model] = {}
        self._samplers: OrderedDict[str, Sampler] = OrderedDict()
        self._tokenizers: dict[str, str | None] = {}
        self._contexts: dict[str, int | None] = {}
        self._saving: set[tuple[str, str]] = set()  # (tenant, tinker path) being saved
        self._lock = threading.RLock()
        self._loader = ThreadPoolExecutor(2, thread_name_prefix="galley-serve-load")
        self._batcher = SampleBatcher()  # one thread: a completer is not shared by threads

    # -- sessions -------------------------------------------------------------------------

    def create_session(self, tenant: str, request: tt.CreateSessionRequest) -> dict[str, Any]:
        session = Session(uuid.uuid4().hex, tenant, time.monotonic())
        with self._lock:
            live = sum(1 for s in self._sessions.values() if s.tenant == tenant and not s.ended)
            if live >= self.limits.max_sessions_per_tenant:
                raise busy(f"{live} sessions are open; finish some (or let them expire)")
            self._sessions[session.session_id] = session
        log.info(
            "session_started",
            session_id=session.session_id,
            tenant=tenant,
            sdk_version=request.sdk_version,
        )
        return to_json(tt.CreateSessionResponse(session_id=session.session_id))

    def _session(self, tenant: str, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or session.tenant != tenant:
            raise not_found(f"session {session_id!r}")
        if session.ended:
            raise ApiError(410, f"session {session_id!r} has ended")
        session.last_seen = time.monotonic()
        return session

    def heartbeat(self, tenant: str, session_id: str) -> dict[str, Any]:
        self._session(tenant, session_id)
        return to_json(tt.SessionHeartbeatResponse())

    def end_session(self, tenant: str, session_id: str, why: str = "finished") -> None:
        session = self._session(tenant, session_id)
        self._end(session, why)

    def _end(self, session: Session, why: str) -> None:
        with self._lock:
            session.ended_at = time.monotonic()
            models = [self._models.pop(m) for m in session.models if m in self._models]
            for sampler_id in session.samplers:
                self._samplers.pop(sampler_id, None)
        for model in models:
            self._close(model)
        log.info("session_ended", session_id=session.session_id, why=why, models=len(models))

    def _close(self, model: Model) -> None:
        def close(f: Future[TrainingSession]) -> None:
            if f.exception() is None:
                f.result().close()

        model.training.add_done_callback(close)
        with self._lock:
            for sampler_id in model.samplers:
                self._samplers.pop(sampler_id, None)

    def reap(self) -> None:
        """End the sessions whose heartbeats stopped; forget sessions ended (and requests
        finished) more than ``keep_results_s`` ago."""
        now = time.monotonic()
        keep = self.limits.keep_results_s
        with self._lock:
            stale = [
                s
                for s in self._sessions.values()
                if not s.ended and now - s.last_seen > self.limits.session_timeout_s
            ]
            for s in list(self._sessions.values()):
                if s.ended_at is not None and now - s.ended_at > keep:
                    del self._sessions[s.session_id]
        for session in stale:
            self._end(session, "heartbeats stopped")
        self.requests.prune()

    # -- models ---------------------------------------------------------------------------

    def _owned(self, table: Mapping[str, Owned], key: str, tenant: str, what: str) -> Owned:
        """``table[key]`` if ``tenant`` owns it and its session lives (another tenant's is
        not found, as if it did not exist)."""
        with self._lock:
            found = table.get(key)
        if found is None or found.tenant != tenant:
            raise not_found(f"{what} {key!r}")
        self._session(tenant, found.session_id)
        return found

    def _model(self, tenant: str, model_id: str) -> Model:
        return self._owned(self._models, model_id, tenant, "model")

    def _start_model(
        self,
        tenant: str,
        session_id: str,
        model_seq_id: int,
        base_model: str,
        lora: LoraConfig,
        user_metadata: Mapping[str, Any] | None,
        then: Callable[[TrainingSession], Future[Any]] | None = None,
        encode: Callable[[Any], Reply] | None = None,
    ) -> dict[str, Any]:
        """A new model (and its run record), loaded on the loader pool; the request resolves
        once it is loaded and ``then`` has run on it."""
        self._session(tenant, session_id)
        model_id = f"{session_id}:train:{model_seq_id}"
        with self._lock:
            if model_id in self._models:
                raise bad_request(f"model {model_id!r} exists already (model_seq_id reused)")
            live = sum(1 for m in self._models.values() if m.tenant == tenant)
            if live >= self.limits.max_models_per_tenant:
                raise busy(f"{live} models are loaded; unload some, or end their sessions")
        record = RunRecord(
            model_id,
            base_model,
            lora,
            time.time(),
            {str(k): str(v) for k, v in (user_metadata or {}).items()},
            last_request=time.time(),
        )
        folder = self.runs.folder(tenant, model_id)
        config = SessionConfig(
            base_model, lora, storage_prefix=folder, run_id=folder.split("/")[-1]
        )
        pending = self.requests.open(tenant)

        def load() -> TrainingSession:
            session = self.adapters.training.start_session(config)
            self.runs.write(tenant, record)
            return session

        training = self._loader.submit(load)
        model = Model(
            model_id,
            tenant,
            session_id,
            base_model,
            lora,
            ModelQueue(self.limits.max_waiting_per_model),
            training,
        )
        with self._lock:
            self._models[model_id] = model
            self._sessions[session_id].models.add(model_id)

        def forget_if_failed(f: Future[TrainingSession]) -> None:
            if f.exception() is not None:  # it never loaded: nothing to train or free
                with self._lock:
                    self._models.pop(model_id, None)

        training.add_done_callback(forget_if_failed)

        work: Future[Any] = _chain(training, then) if then is not None else training
        reply = encode or (lambda _: to_json(tt.CreateModelResponse(model_id=model_id)))
        settle(pending, work, reply)
        log.info("model_created", model_id=model_id, base_model=base_model, lora_rank=lora.rank)
        return _future(pending.request_id, model_id)

    def create_model(self, tenant: str, request: tt.CreateModelRequest) -> dict[str, Any]:
        if not isinstance(request.optimizer_config, tt.AdamOptimizerConfig):
            raise unsupported(f"optimizer {request.optimizer_config.type!r} (AdamW only)")
        lora = request.lora_config
        try:
            config = (
                LoraConfig(
                    rank=lora.rank,
                    seed=lora.seed or 0,
                    train_attn=lora.train_attn,
                    train_mlp=lora.train_mlp,
                    train_unembed=lora.train_unembed,
                )
                if lora is not None
                else LoraConfig(rank=0)
            )
        except GalleyError as e:
            raise bad_request(f"lora_config: {e}") from None
        return self._start_model(
            tenant,
            request.session_id,
            request.model_seq_id,
            request.base_model,
            config,
            request.user_metadata,
        )

    def _tokenizer_id(self, base_model: str) -> str | None:
        """A local folder ``AutoTokenizer.from_pretrained`` loads offline, if the hub has one."""
        if base_model not in self._tokenizers:
            try:
                folder: Path | None = resolve_model_folder(base_model, self.adapters.hub)
            except (GalleyError, OSError):
                folder = None
            ok = folder is not None and (folder / "tokenizer.json").is_file()
            self._tokenizers[base_model] = str(folder) if ok else None
        return self._tokenizers[base_model]

    def get_info(self, tenant: str, request: tt.GetInfoRequest) -> dict[str, Any]:
        model = self._model(tenant, request.model_id)
        return to_json(
            tt.GetInfoResponse(
                model_id=model.model_id,
                model_data=tt.ModelData(
                    model_name=model.base_model, tokenizer_id=self._tokenizer_id(model.base_model)
                ),
                is_lora=model.lora.rank > 0,
                lora_rank=model.lora.rank or None,
                model_name=model.base_model,
            )
        )

    def _ordered(
        self,
        tenant: str,
        model_id: str,
        seq_id: int | None,
        work: Callable[[TrainingSession], Future[Any]],
        encode: Callable[[Any], Reply],
    ) -> dict[str, Any]:
        """Run ``work`` on the model in ``seq_id`` order; a retried ``seq_id`` gets the
        request it already made."""
        model = self._model(tenant, model_id)
        again = model.queue.seen(seq_id)
        if again is not None:
            return _future(again, model_id)
        pending = self.requests.open(tenant)

        def start() -> None:
            settle(pending, _chain(model.training, work), encode)

        try:
            model.queue.put(seq_id, pending.request_id, start)
        except ApiError as e:
            pending.result.set_exception(e)
            raise
        return _future(pending.request_id, model_id)

    def forward_backward(self, tenant: str, call: wire.ForwardBackwardCall) -> dict[str, Any]:
        def work(session: TrainingSession) -> Future[Any]:
            run = session.forward if call.forward_only else session.forward_backward
            return run(call.data, call.loss_fn, call.loss_fn_config)

        return self._ordered(tenant, call.model_id, call.seq_id, work, wire.forward_backward_output)

    def optim_step(self, tenant: str, request: tt.OptimStepRequest) -> dict[str, Any]:
        params = wire.adam_params(request)

        def encode(result: OptimStepResult) -> Reply:
            metrics = {
                "step:max": float(result.step),
                "learning_rate:mean": result.learning_rate,
                "grad_norm:mean": result.grad_norm,
                "update_norm:mean": result.update_norm,
            }
            return to_json(tt.OptimStepResponse(metrics=metrics))

        return self._ordered(
            tenant, request.model_id, request.seq_id, lambda s: s.optim_step(params), encode
        )

    def save_weights(self, tenant: str, request: tt.SaveWeightsRequest) -> dict[str, Any]:
        name = checkpoint_name(request.path or f"checkpoint-{request.seq_id or 0}", "path")
        path = TinkerPath(request.model_id, "state", name)
        return self._save(
            tenant,
            path,
            request.seq_id,
            request.overwrite,
            lambda s: s.save_state(name),
            tt.SaveWeightsResponse,
            request.user_metadata,
        )

    def _reserve(self, tenant: str, path: TinkerPath, overwrite: bool) -> None:
        """Saving over a checkpoint is asked for explicitly, never done by a name reused: a
        name saved already, or being saved by a queued request, is refused."""
        taken = (tenant, str(path))
        with self._lock:
            if taken in self._saving:
                raise bad_request(f"{path} is being saved by an earlier request")
            try:
                self.runs.key_of(tenant, path)
            except ApiError:
                pass
            else:
                if not overwrite:
                    raise bad_request(f"{path} exists; save under another name (or overwrite)")
            self._saving.add(taken)

    def _saved(
        self,
        tenant: str,
        path: TinkerPath,
        ref: CheckpointRef,
        kind: Any,
        user_metadata: Mapping[str, str],
    ) -> Reply:
        try:
            self.runs.record_saved(tenant, path, ref.key, user_metadata)
        finally:
            self._saving.discard((tenant, str(path)))
        log.info("checkpoint_saved", path=str(path), step=ref.step)
        return to_json(kind(path=str(path)))

    def _save(
        self,
        tenant: str,
        path: TinkerPath,
        seq_id: int | None,
        overwrite: bool,
        work: Callable[[TrainingSession], Future[CheckpointRef]],
        kind: Any,
        user_metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """A named save, in the model's order, its name reserved until it is done."""
        model = self._model(tenant, path.run_id)
        again = model.queue.seen(seq_id)
        if again is not None:  # a retry: its name is reserved by the first try
            return _future(again, model.model_id)
        self._reserve(tenant, path, overwrite)
        taken = (tenant, str(path))

        def release_if_failed(f: Future[CheckpointRef]) -> None:
            if f.exception() is not None:
                self._saving.discard(taken)

        def save(session: TrainingSession) -> Future[CheckpointRef]:
            saving = work(session)
            saving.add_done_callback(release_if_failed)
            return saving

        try:
            return self._ordered(
                tenant,
                path.run_id,
                seq_id,
                save,
                lambda ref: self._saved(tenant, path, ref, kind, user_metadata or {}),
            )
        except ApiError:
            self._saving.discard(taken)
            raise

    def save_weights_for_sampler(
        self, tenant: str, request: tt.SaveWeightsForSamplerRequest
    ) -> dict[str, Any]:
        if request.path is not None:
            name = checkpoint_name(request.path, "path")
            path = TinkerPath(request.model_id, "sampler", name)
            return self._save(
                tenant,
                path,
                request.seq_id,
                False,
                lambda s: s.save_weights_for_sampler(name),
                tt.SaveWeightsForSamplerResponseInternal,
                request.user_metadata,
            )
        if request.sampling_session_seq_id is None:
            raise bad_request("give a path (a named save) or a sampling_session_seq_id")
        if request.kind != "snapshot":
            raise unsupported(f"{request.kind!r} sampling clients (snapshot only)")
        model = self._model(tenant, request.model_id)
        sampler_id = f"{model.session_id}:sample:{request.sampling_session_seq_id}"

        def encode(completer: Completer) -> Reply:
            self._add_sampler(
                Sampler(
                    sampler_id, tenant, model.session_id, model.base_model, None, completer, None
                ),
                model,
            )
            return to_json(tt.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id))

        return self._ordered(
            tenant,
            request.model_id,
            request.seq_id,
            lambda s: s.save_weights_and_get_sampling_client(),
            encode,
        )

    def _add_sampler(self, sampler: Sampler, model: Model | None = None) -> None:
        with self._lock:
            self._samplers[sampler.sampler_id] = sampler
            session = self._sessions.get(sampler.session_id)
            if session is not None:
                session.samplers.add(sampler.sampler_id)
            if model is not None:  # the newest few of a model's ephemeral samplers are kept
                model.samplers.append(sampler.sampler_id)
                while len(model.samplers) > self.limits.max_samplers_per_model:
                    self._samplers.pop(model.samplers.pop(0), None)

    def load_weights(self, tenant: str, request: tt.LoadWeightsRequest) -> dict[str, Any]:
        path = TinkerPath.parse(request.path)
        ref = self.catalog.checkpoint(tenant, path)
        if request.optimizer and ref.kind != "state":
            raise bad_request(f"{path} holds sampler weights; an optimizer state needs weights/")

        def load(session: TrainingSession) -> Future[None]:
            return session.load_state(ref) if request.optimizer else session.load_weights(ref)

        if request.model_id is not None:
            model_id = request.model_id

            def encode(_: Any) -> Reply:
                return to_json(tt.LoadWeightsResponse(path=str(path), model_id=model_id))

            return self._ordered(tenant, model_id, request.seq_id, load, encode)
        if request.session_id is None or request.model_seq_id is None:
            raise bad_request("give model_id, or session_id and model_seq_id")
        source = self.runs.read(tenant, path.run_id)
        if request.base_model not in (None, source.base_model):
            raise bad_request(
                f"{path} was trained on {source.base_model!r}, not {request.base_model!r}"
            )
        new_id = f"{request.session_id}:train:{request.model_seq_id}"
        return self._start_model(
            tenant,
            request.session_id,
            request.model_seq_id,
            source.base_model,
            source.lora,
            request.user_metadata,
            then=load,
            encode=lambda _: to_json(tt.LoadWeightsResponse(path=str(path), model_id=new_id)),
        )

    def unload_model(self, tenant: str, request: tt.UnloadModelRequest) -> dict[str, Any]:
        model = self._model(tenant, request.model_id)
        with self._lock:
            self._models.pop(model.model_id, None)
            self._sessions[model.session_id].models.discard(model.model_id)
        self._close(model)
        pending = self.requests.open(tenant)
        pending.result.set_result(to_json(tt.UnloadModelResponse(model_id=model.model_id)))
        return _future(pending.request_id, model.model_id)

    # -- sampling -------------------------------------------------------------------------

    def create_sampling_session(
        self, tenant: str, request: tt.CreateSamplingSessionRequest
    ) -> dict[str, Any]:
        self._session(tenant, request.session_id)
        sampler_id = f"{request.session_id}:sample:{request.sampling_session_seq_id}"
        if request.model_path is not None:
            path = TinkerPath.parse(request.model_path)
            if path.kind != "sampler":
                raise bad_request(
                    f"{path} is a training state; sample from sampler weights "
                    "(save_weights_for_sampler)"
                )
            ref = self.catalog.checkpoint(tenant, path)
            base = ref.base_model or self.runs.read(tenant, path.run_id).base_model
            model = ModelRef(base, adapter=ref)
        elif request.base_model:
            base, model = request.base_model, ModelRef(request.base_model)
        else:
            raise bad_request("give model_path or base_model")
        self._add_sampler(
            Sampler(
                sampler_id,
                tenant,
                request.session_id,
                base,
                request.model_path,
                self.adapters.completer,
                model,
            )
        )
        return to_json(tt.CreateSamplingSessionResponse(sampling_session_id=sampler_id))

    def _sampler(self, tenant: str, sampler_id: str) -> Sampler:
        return self._owned(self._samplers, sampler_id, tenant, "sampler")

    def get_sampler(self, tenant: str, sampler_id: str) -> dict[str, Any]:
        s = self._sampler(tenant, sampler_id)
        return to_json(
            tt.GetSamplerResponse(
                sampler_id=s.sampler_id, base_model=s.base_model, model_path=s.model_path
            )
        )

    def asample(self, tenant: str, request: tt.SampleRequest) -> dict[str, Any]:
        params = wire.sampling_params(request)
        prompt = wire.prompt_tokens(request.prompt)
        last_n = request.prompt_logprobs_last_n
        if last_n is not None and not (request.prompt_logprobs and 1 <= last_n < prompt.length):
            raise bad_request("prompt_logprobs_last_n needs prompt_logprobs, 1 <= n < len(prompt)")
        if request.sampling_session_id is not None:
            sampler = self._sampler(tenant, request.sampling_session_id)
        elif request.model_path is not None or request.base_model is not None:
            raise unsupported("sampling without a sampling session (create a sampling client)")
        else:
            raise bad_request("give sampling_session_id")
        seq = request.seq_id
        if seq is not None and seq in sampler.seen:
            request_id, ids = sampler.seen[seq]
            return {"request_id": request_id, "sample_sequence_ids": ids}
        if self._batcher.queued >= self.limits.max_queued_samples:
            raise busy(f"{self._batcher.queued} sampling requests are queued")
        pending = self.requests.open(tenant)
        ids = [f"{pending.request_id}:{i}" for i in range(request.num_samples)]
        job = SampleJob(sampler.completer, sampler.model, params, request.num_samples, prompt)
        settle(pending, self._batcher.submit(job), lambda c: wire.sample_response(c, last_n))
        if seq is not None:
            sampler.seen[seq] = (pending.request_id, ids)
            while len(sampler.seen) > SEEN_SAMPLES:
                sampler.seen.popitem(last=False)
        return {"request_id": pending.request_id, "sample_sequence_ids": ids}

    def capabilities(self) -> dict[str, Any]:
        return to_json(
            tt.GetServerCapabilitiesResponse(
                supported_models=[
                    tt.SupportedModel(
                        model_name=m,
                        max_context_length=self._context_length(m),
                        trainable=True,
                        sampleable=True,
                    )
                    for m in self.models
                ]
            )
        )

    def _context_length(self, base_model: str) -> int | None:
        """From the model folder's config, where the hub has one."""
        if base_model not in self._contexts:
            try:
                folder = resolve_model_folder(base_model, self.adapters.hub)
                config = json.loads((folder / "config.json").read_text())
                self._contexts[base_model] = int(config["max_position_embeddings"])
            except (GalleyError, OSError, ValueError, KeyError, TypeError):
                self._contexts[base_model] = None
        return self._contexts[base_model]

    def close(self) -> None:
        with self._lock:
            sessions = [s for s in self._sessions.values() if not s.ended]
        for session in sessions:
            self._end(session, "server stopped")
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._batcher.close()


def _chain(first: Future[Any], then: Callable[[Any], Future[Any]]) -> Future[Any]:
    """A future of ``then(first's result)``'s result; a failure of either fails it."""
    out: Future[Any] = Future()

    def second(f: Future[Any]) -> None:
        if f.exception() is not None:
            out.set_exception(f.exception())
        elif not out.done():
            out.set_result(f.result())

    def first_done(f: Future[Any]) -> None:
        if f.exception() is not None:
            out.set_exception(f.exception())
            return
        try:
            then(f.result()).add_done_callback(second)
        except Exception as e:  # refused at submission (a bad datum): this request fails
            out.set_exception(e)

    first.add_done_callback(first_done)
    return out
