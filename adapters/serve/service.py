"""What ``galley serve`` does for each Tinker endpoint, on galley's ports; no HTTP here.

``TinkerService`` is a thin façade over the services that answer the endpoints: sessions
(here, over ``tenancy``: who owns which session, model and sampler, and when they expire),
training models (``models``), weights and checkpoints (``weights``) and sampling
(``samplers``); what the server says about a base model is ``model_facts``."""

from __future__ import annotations

from typing import Any

import structlog
from tinker import types as tt

from galley.adapters.serve.catalog import RunCatalog, to_json
from galley.adapters.serve.model_facts import ModelFacts
from galley.adapters.serve.models import ModelService
from galley.adapters.serve.requests import RequestTable
from galley.adapters.serve.runs import RunStore
from galley.adapters.serve.samplers import SamplerService
from galley.adapters.serve.saves import SaveNames
from galley.adapters.serve.tenancy import DEFAULT_LIMITS, ServeLimits, Tenancy
from galley.adapters.serve.weights import WeightService
from galley.core.adapter_set import Adapters

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
        self.training = ModelService(
            adapters, limits, self.runs, self.requests, self.tenancy, self.facts
        )
        self.weights = WeightService(
            self.training, self.tenancy, self.catalog, self.runs, SaveNames(self.runs)
        )
        self.samplers = SamplerService(
            adapters, limits, self.tenancy, self.catalog, self.runs, self.requests
        )

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

    def capabilities(self) -> dict[str, Any]:
        return to_json(self.facts.capabilities(self.models))

    def close(self) -> None:
        self.tenancy.close()
        self.training.close()
        self.samplers.close()
