"""What ``galley serve`` does for each Tinker endpoint, on galley's ports; no HTTP here.

Each model trained is one ``TrainingSession`` of the configured TrainingClient; its requests
run in ``seq_id`` order. Who owns which session, model and sampler, and when they expire, is
``tenancy``; what the server says about a base model is ``model_facts``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog
from tinker import types as tt

from galley.adapters.serve import wire
from galley.adapters.serve.batcher import SampleBatcher, SampleJob
from galley.adapters.serve.catalog import RunCatalog, to_json
from galley.adapters.serve.errors import ApiError, bad_request, busy, unsupported
from galley.adapters.serve.model_facts import ModelFacts
from galley.adapters.serve.requests import (
    ModelQueue,
    Reply,
    RequestTable,
    chained,
    future_reply,
    settle,
)
from galley.adapters.serve.runs import RunStore, ServedRun, TinkerPath, checkpoint_name
from galley.adapters.serve.saves import SaveNames
from galley.adapters.serve.tenancy import DEFAULT_LIMITS, Model, Sampler, ServeLimits, Tenancy
from galley.core.adapter_set import Adapters
from galley.core.domain.types import (
    CheckpointRef,
    LoraConfig,
    ModelRef,
    OptimStepResult,
    SessionConfig,
)
from galley.core.errors import GalleyError
from galley.ports.completer import Completer
from galley.ports.training import TrainingSession

log = structlog.get_logger("galley.serve")


class TinkerService:
    def __init__(
        self,
        adapters: Adapters,
        *,
        root: str = "runs/serve",
        models: tuple[str, ...] = ("galley/tiny-lm",),
        limits: ServeLimits = DEFAULT_LIMITS,
    ) -> None:
        self.adapters, self.limits, self.models = adapters, limits, models
        self.runs = RunStore(adapters.blobs, root)
        self.catalog = RunCatalog(adapters.blobs, self.runs)
        self.requests = RequestTable(limits.max_requests, limits.keep_results_s)
        self.tenancy = Tenancy(limits)
        self.facts = ModelFacts(adapters.hub)
        self.save_names = SaveNames(self.runs)
        self._loader = ThreadPoolExecutor(2, thread_name_prefix="galley-serve-load")
        self._batcher = SampleBatcher()  # one thread: a completer is not shared by threads

    # -- sessions -------------------------------------------------------------------------

    def create_session(self, tenant: str, request: tt.CreateSessionRequest) -> dict[str, Any]:
        session = self.tenancy.open_session(tenant)
        log.info(
            "session_started",
            session_id=session.session_id,
            tenant=tenant,
            sdk_version=request.sdk_version,
        )
        return to_json(tt.CreateSessionResponse(session_id=session.session_id))

    def heartbeat(self, tenant: str, session_id: str) -> dict[str, Any]:
        self.tenancy.session(tenant, session_id)
        return to_json(tt.SessionHeartbeatResponse())

    def end_session(self, tenant: str, session_id: str, why: str = "finished") -> None:
        self.tenancy.end(self.tenancy.session(tenant, session_id), why)

    def reap(self) -> None:
        """End the sessions whose heartbeats stopped; forget old sessions and requests."""
        self.tenancy.reap()
        self.requests.prune()

    # -- models ---------------------------------------------------------------------------

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
        self.tenancy.session(tenant, session_id)
        model_id = f"{session_id}:train:{model_seq_id}"
        self.tenancy.check_room_for(tenant, model_id)
        record = ServedRun(
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
        self.tenancy.add_model(model)
        work: Future[Any] = chained(training, then) if then is not None else training
        reply = encode or (lambda _: to_json(tt.CreateModelResponse(model_id=model_id)))
        settle(pending, work, reply)
        log.info("model_created", model_id=model_id, base_model=base_model, lora_rank=lora.rank)
        return future_reply(pending.request_id, model_id)

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

    def get_info(self, tenant: str, request: tt.GetInfoRequest) -> dict[str, Any]:
        model = self.tenancy.model(tenant, request.model_id)
        return to_json(
            tt.GetInfoResponse(
                model_id=model.model_id,
                model_data=tt.ModelData(
                    model_name=model.base_model,
                    tokenizer_id=self.facts.tokenizer_id(model.base_model),
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
        model = self.tenancy.model(tenant, model_id)
        again = model.queue.seen(seq_id)
        if again is not None:
            return future_reply(again, model_id)
        pending = self.requests.open(tenant)

        def start() -> None:
            settle(pending, chained(model.training, work), encode)

        try:
            model.queue.put(seq_id, pending.request_id, start)
        except ApiError as e:
            pending.result.set_exception(e)
            raise
        return future_reply(pending.request_id, model_id)

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

    def _saved(
        self, tenant: str, path: TinkerPath, ref: CheckpointRef, kind: Any, meta: Mapping[str, str]
    ) -> Reply:
        self.save_names.record(tenant, path, ref, meta)
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
        model = self.tenancy.model(tenant, path.run_id)
        again = model.queue.seen(seq_id)
        if again is not None:  # a retry: its name is reserved by the first try
            return future_reply(again, model.model_id)
        self.save_names.reserve(tenant, path, overwrite)

        def release_if_failed(f: Future[CheckpointRef]) -> None:
            if f.exception() is not None:
                self.save_names.release(tenant, path)

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
            self.save_names.release(tenant, path)
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
        model = self.tenancy.model(tenant, request.model_id)
        sampler_id = f"{model.session_id}:sample:{request.sampling_session_seq_id}"

        def encode(completer: Completer) -> Reply:
            self.tenancy.add_sampler(
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
        model = self.tenancy.model(tenant, request.model_id)
        self.tenancy.unload(model)
        pending = self.requests.open(tenant)
        pending.result.set_result(to_json(tt.UnloadModelResponse(model_id=model.model_id)))
        return future_reply(pending.request_id, model.model_id)

    # -- sampling -------------------------------------------------------------------------

    def create_sampling_session(
        self, tenant: str, request: tt.CreateSamplingSessionRequest
    ) -> dict[str, Any]:
        self.tenancy.session(tenant, request.session_id)
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
        self.tenancy.add_sampler(
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

    def get_sampler(self, tenant: str, sampler_id: str) -> dict[str, Any]:
        s = self.tenancy.sampler(tenant, sampler_id)
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
            sampler = self.tenancy.sampler(tenant, request.sampling_session_id)
        elif request.model_path is not None or request.base_model is not None:
            raise unsupported("sampling without a sampling session (create a sampling client)")
        else:
            raise bad_request("give sampling_session_id")
        seen = sampler.seen_request(request.seq_id)
        if seen is not None:
            return {"request_id": seen[0], "sample_sequence_ids": seen[1]}
        if self._batcher.queued >= self.limits.max_queued_samples:
            raise busy(f"{self._batcher.queued} sampling requests are queued")
        pending = self.requests.open(tenant)
        ids = [f"{pending.request_id}:{i}" for i in range(request.num_samples)]
        job = SampleJob(sampler.completer, sampler.model, params, request.num_samples, prompt)
        settle(pending, self._batcher.submit(job), lambda c: wire.sample_response(c, last_n))
        sampler.remember(request.seq_id, pending.request_id, ids)
        return {"request_id": pending.request_id, "sample_sequence_ids": ids}

    def capabilities(self) -> dict[str, Any]:
        return to_json(self.facts.capabilities(self.models))

    def close(self) -> None:
        self.tenancy.close()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._batcher.close()
