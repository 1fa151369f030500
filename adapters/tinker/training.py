"""The ``tinker`` TrainingClient: galley sessions as LoRA training clients of the ``tinker``
SDK, on the hosted Tinker service or on ``galley serve``.

Requests keep the port's order because the SDK numbers a training client's requests as they
are submitted and the service runs them in that order. Checkpoints live on the service: a
ref's key is its ``tinker://`` path. Each save carries the session's run id, the name and the
step as checkpoint metadata, so ``load_state`` can refuse a checkpoint that is not the one
asked for, as the port requires."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from tinker import types as tt

from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.adapters.tinker.completer import TinkerCompleter
from galley.adapters.tinker.convert import (
    failed,
    galley_adam,
    galley_error,
    galley_output,
    mapped,
    sdk_adam,
    sdk_datum,
)
from galley.adapters.tinker.tokenizer import for_model
from galley.core.domain.types import (
    AdamParams,
    CheckpointKind,
    CheckpointRef,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    LoraConfig,
    ModelInfo,
    OptimStepResult,
    SessionConfig,
)
from galley.core.errors import GalleyError, ValidationError
from galley.core.keys import check_name
from galley.core.runs.manifest import CheckpointMismatchError, Manifest, check_identity
from galley.ports.hub import HubClient

# Checkpoint metadata that says which checkpoint it is (checked on load).
RUN, NAME, STEP, KIND = "galley_run_id", "galley_name", "galley_step", "galley_kind"
DEFAULT_CONTEXT = 32768  # when the service does not say a model's context length


class TinkerTrainingSession:
    def __init__(
        self, client: TinkerTrainingClient, config: SessionConfig, trainer: Any, context: int
    ) -> None:
        self.config, self._client, self._trainer = config, client, trainer
        named = trainer.get_info().model_data.tokenizer_id
        self._tokenizer = for_model([named, config.base_model], client.hub, trainer.get_tokenizer)
        self._step = 0
        self._closed = False
        self._info = ModelInfo(
            name=config.base_model,
            vocab_size=self._tokenizer.vocab_size,
            max_context=context,
            lora_rank=config.lora.rank,
        )

    @property
    def session_id(self) -> str:
        return str(self._trainer.model_id)

    @property
    def tokenizer(self) -> HFTokenizerAdapter:
        return self._tokenizer

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def _open(self) -> None:
        if self._closed:
            raise GalleyError(f"session {self.session_id} is closed")

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        return self._submit(self._trainer.forward, data, loss_fn, loss_fn_config)

    def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        return self._submit(self._trainer.forward_backward, data, loss_fn, loss_fn_config)

    def _submit(
        self,
        call: Any,
        data: Sequence[Datum],
        loss_fn: str,
        config: Mapping[str, float] | None,
    ) -> Future[ForwardBackwardOutput]:
        """Checked here (so a bad request raises at submission, as the port says), then
        sent as the SDK's types."""
        self._open()
        request = ForwardBackwardInput(tuple(data), loss_fn, dict(config or {}))
        request.check_vocabulary(self._info.vocab_size)
        sdk_data = [sdk_datum(d) for d in request.data]
        sdk_config = dict(request.loss_fn_config) or None
        return mapped(call(sdk_data, str(request.loss_fn), sdk_config), galley_output)

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self._open()
        self._step += 1
        step = self._step
        return mapped(
            self._trainer.optim_step(sdk_adam(params)),
            lambda r: galley_adam(r, step, params),
        )

    def _metadata(self, kind: CheckpointKind, name: str) -> dict[str, str]:
        return {RUN: self.config.run_id, NAME: name, STEP: str(self._step), KIND: kind}

    def save_state(self, name: str) -> Future[CheckpointRef]:
        self._open()
        check_name(name, "save_state.name")
        step = self._step
        sdk = self._trainer.save_state(name, user_metadata=self._metadata("state", name))
        return mapped(sdk, lambda r: self._ref("state", name, r.path, step))

    def save_weights_for_sampler(self, name: str) -> Future[CheckpointRef]:
        self._open()
        check_name(name, "save_weights_for_sampler.name")
        step = self._step
        sdk = self._trainer.save_weights_for_sampler(
            name, user_metadata=self._metadata("sampler", name)
        )
        return mapped(sdk, lambda r: self._ref("sampler", name, r.path, step))

    def _ref(self, kind: CheckpointKind, name: str, path: str, step: int) -> CheckpointRef:
        return CheckpointRef(kind, name, path, self.config.run_id, step, self.config.base_model)

    def _check(self, ref: CheckpointRef, *, state: bool) -> None:
        """Before a load: the service's record of the checkpoint is the one ``ref`` names,
        and was saved with this session's LoRA shape."""
        if not ref.key.startswith("tinker://"):
            raise ValidationError("load", f"{ref.key!r} is not a tinker:// checkpoint path")
        found = self._client.checkpoint_metadata(ref.key)
        if state:
            saved = Manifest(
                found.get(KIND, "?"),
                found.get(NAME, "?"),
                found.get(RUN, "?"),
                int(found.get(STEP, "-1")),
                {},
            )
            check_identity(saved, ref)
        info = self._client.weights_info(ref.key)
        if info.lora_rank != (self.config.lora.rank or None):
            raise ValidationError(
                "load_weights",
                f"{ref.key!r} is a LoRA of rank {info.lora_rank}; this session trains rank "
                f"{self.config.lora.rank}",
            )

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        self._open()
        if ref.kind != "state":
            raise ValidationError("load_state.ref", f"expected a state checkpoint, got {ref.kind}")
        try:
            self._check(ref, state=True)
        except (GalleyError, ValueError) as e:
            return failed(e if isinstance(e, GalleyError) else galley_error(e))
        self._step = ref.step
        return mapped(self._trainer.load_state_with_optimizer(ref.key), lambda _: None)

    def load_weights(self, ref: CheckpointRef) -> Future[None]:
        self._open()
        try:
            self._check(ref, state=False)
        except GalleyError as e:
            return failed(e)
        self._step = 0
        return mapped(self._trainer.load_state(ref.key), lambda _: None)

    def save_weights_and_get_sampling_client(self) -> Future[TinkerCompleter]:
        self._open()
        service = self._client.service
        return mapped(
            self._trainer.save_weights_and_get_sampling_client(),
            lambda sampler: TinkerCompleter(service, sampler=sampler, tokenizer=self._tokenizer),
        )

    def close(self) -> None:
        self._closed = True


class TinkerTrainingClient:
    """LoRA sessions on a Tinker service: ``base_url`` and ``api_key`` as given, else
    ``TINKER_BASE_URL`` and ``TINKER_API_KEY`` (read by the SDK; never logged here).
    Tokenizers are read with galley's own reader, from a folder the service names or galley's
    ``hub``, else from the SDK's."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, hub: HubClient | None = None
    ) -> None:
        self._base_url, self._api_key, self.hub = base_url, api_key, hub
        self._service: Any = None
        self._rest: Any = None
        self._ids = itertools.count(1)

    @property
    def service(self) -> Any:
        if self._service is None:
            import tinker

            self._service = tinker.ServiceClient(base_url=self._base_url, api_key=self._api_key)
        return self._service

    @property
    def rest(self) -> Any:
        if self._rest is None:
            import tinker

            self._rest = tinker.RestClient(base_url=self._base_url, api_key=self._api_key)
        return self._rest

    def close(self) -> None:
        """End the SDK session: the service frees its models now rather than when the
        session's heartbeats stop."""
        if self._service is not None:
            self._service.close("success").result()
            self._service = None

    def start_session(self, config: SessionConfig) -> TinkerTrainingSession:
        lora = config.lora
        if lora.rank == 0:
            raise ValidationError(
                "lora.rank", "the Tinker API trains LoRA adapters only (rank >= 1)"
            )
        if lora.alpha != LoraConfig().alpha:
            raise ValidationError(
                "lora.alpha",
                f"the Tinker API sets LoRA alpha itself; {lora.alpha:g} can't be asked for",
            )
        try:
            trainer = self.service.create_lora_training_client(
                base_model=config.base_model,
                rank=lora.rank,
                seed=lora.seed,
                train_mlp=lora.train_mlp,
                train_attn=lora.train_attn,
                train_unembed=lora.train_unembed,
            ).result()
        except Exception as e:
            raise galley_error(e) from e
        return TinkerTrainingSession(self, config, trainer, self.context_length(config.base_model))

    def context_length(self, base_model: str) -> int:
        try:
            models = self.rest.get_server_capabilities().result().supported_models
        except Exception:
            return DEFAULT_CONTEXT
        for m in models:
            if m.model_name == base_model and m.max_context_length:
                return int(m.max_context_length)
        return DEFAULT_CONTEXT

    def checkpoint_metadata(self, path: str) -> dict[str, str]:
        parsed = tt.ParsedCheckpointTinkerPath.from_tinker_path(path)
        try:
            listed = self.rest.list_checkpoints(parsed.training_run_id).result().checkpoints
        except Exception as e:
            raise galley_error(e) from e
        for checkpoint in listed:
            if checkpoint.tinker_path == path:
                return dict(checkpoint.user_metadata or {})
        raise CheckpointMismatchError(f"checkpoint {path!r} is not on the service (deleted?)")

    def weights_info(self, path: str) -> tt.WeightsInfoResponse:
        try:
            info: tt.WeightsInfoResponse = self.rest.get_weights_info_by_tinker_path(path).result()
        except Exception as e:
            raise galley_error(e) from e
        return info
