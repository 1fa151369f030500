"""Training models: each one ``TrainingSession`` of the configured TrainingClient, loaded off
the event loop, its requests run in ``seq_id`` order (a retried ``seq_id`` gets the request
it already made)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog
from tinker import types as tt

from galley.adapters.serve import wire
from galley.adapters.serve.catalog import to_json
from galley.adapters.serve.errors import ApiError, bad_request, unsupported
from galley.adapters.serve.model_facts import ModelFacts
from galley.adapters.serve.requests import (
    ModelQueue,
    Reply,
    RequestTable,
    chained,
    future_reply,
    settle,
)
from galley.adapters.serve.runs import RunStore, ServedRun
from galley.adapters.serve.tenancy import Model, ServeLimits, Tenancy
from galley.core.adapter_set import Adapters
from galley.core.domain.types import LoraConfig, OptimStepResult, SessionConfig
from galley.core.errors import GalleyError
from galley.ports.training import TrainingSession

log = structlog.get_logger("galley.serve")


class ModelService:
    """create_model, get_info, forward_backward, optim_step, unload_model."""

    def __init__(
        self,
        adapters: Adapters,
        limits: ServeLimits,
        runs: RunStore,
        requests: RequestTable,
        tenancy: Tenancy,
        facts: ModelFacts,
    ) -> None:
        self.adapters, self.limits, self.runs = adapters, limits, runs
        self.requests, self.tenancy, self.facts = requests, tenancy, facts
        self._loader = ThreadPoolExecutor(2, thread_name_prefix="galley-serve-load")

    def start(
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
        return self.start(
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

    def ordered(
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

        return self.ordered(tenant, call.model_id, call.seq_id, work, wire.forward_backward_output)

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

        return self.ordered(
            tenant, request.model_id, request.seq_id, lambda s: s.optim_step(params), encode
        )

    def unload_model(self, tenant: str, request: tt.UnloadModelRequest) -> dict[str, Any]:
        model = self.tenancy.model(tenant, request.model_id)
        self.tenancy.unload(model)
        pending = self.requests.open(tenant)
        pending.result.set_result(to_json(tt.UnloadModelResponse(model_id=model.model_id)))
        return future_reply(pending.request_id, model.model_id)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
