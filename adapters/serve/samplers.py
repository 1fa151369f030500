"""Sampling: sampling clients of a base model or saved sampler weights, and sample requests,
batched on one thread (a completer is not shared by threads) with a bounded queue."""

from __future__ import annotations

from typing import Any

from tinker import types as tt

from galley.adapters.serve import wire
from galley.adapters.serve.batcher import SampleBatcher, SampleJob
from galley.adapters.serve.catalog import RunCatalog, to_json
from galley.adapters.serve.errors import bad_request, busy, unsupported
from galley.adapters.serve.requests import RequestTable, settle
from galley.adapters.serve.runs import RunStore, TinkerPath
from galley.adapters.serve.tenancy import Sampler, ServeLimits, Tenancy
from galley.core.adapter_set import Adapters
from galley.core.domain.types import ModelRef


class SamplerService:
    """create_sampling_session, get_sampler, asample."""

    def __init__(
        self,
        adapters: Adapters,
        limits: ServeLimits,
        tenancy: Tenancy,
        catalog: RunCatalog,
        runs: RunStore,
        requests: RequestTable,
    ) -> None:
        self.adapters, self.limits, self.tenancy = adapters, limits, tenancy
        self.catalog, self.runs, self.requests = catalog, runs, requests
        self._batcher = SampleBatcher()

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

    def close(self) -> None:
        self._batcher.close()
