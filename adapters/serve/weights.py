"""Weights and checkpoints: named saves (state or sampler weights, reserved until done),
sampling clients of a model's current weights, and loading a save into a model, new or
existing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import structlog
from tinker import types as tt

from galley.adapters.serve.catalog import RunCatalog, to_json
from galley.adapters.serve.errors import ApiError, bad_request, unsupported
from galley.adapters.serve.models import ModelService
from galley.adapters.serve.requests import Reply, future_reply
from galley.adapters.serve.runs import RunStore, TinkerPath, checkpoint_name
from galley.adapters.serve.saves import SaveNames
from galley.adapters.serve.tenancy import Sampler, Tenancy
from galley.core.domain.types import CheckpointRef
from galley.ports.completer import Completer
from galley.ports.training import TrainingSession

log = structlog.get_logger("galley.serve")


class WeightService:
    """save_weights, save_weights_for_sampler, load_weights: in each model's order."""

    def __init__(
        self,
        models: ModelService,
        tenancy: Tenancy,
        catalog: RunCatalog,
        runs: RunStore,
        save_names: SaveNames,
    ) -> None:
        self.models, self.tenancy, self.catalog = models, tenancy, catalog
        self.runs, self.save_names = runs, save_names

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
            return self.models.ordered(
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

        return self.models.ordered(
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

            return self.models.ordered(tenant, model_id, request.seq_id, load, encode)
        if request.session_id is None or request.model_seq_id is None:
            raise bad_request("give model_id, or session_id and model_seq_id")
        source = self.runs.read(tenant, path.run_id)
        if request.base_model not in (None, source.base_model):
            raise bad_request(
                f"{path} was trained on {source.base_model!r}, not {request.base_model!r}"
            )
        new_id = f"{request.session_id}:train:{request.model_seq_id}"
        return self.models.start(
            tenant,
            request.session_id,
            request.model_seq_id,
            source.base_model,
            source.lora,
            request.user_metadata,
            then=load,
            encode=lambda _: to_json(tt.LoadWeightsResponse(path=str(path), model_id=new_id)),
        )
