"""Who owns what on ``galley serve``, and for how long.

Sessions, the models trained in them and the samplers made from them belong to the tenant
of the key that made them; every lookup is by tenant, so another tenant's things are not
found. A session whose heartbeats stop for ``session_timeout_s`` expires: its models are
closed and its samplers dropped, freeing their memory."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TypeVar

import attrs
import structlog

from galley.adapters.serve.errors import ApiError, bad_request, busy, not_found
from galley.adapters.serve.requests import ModelQueue
from galley.core.domain.types import LoraConfig, ModelRef
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


DEFAULT_LIMITS = ServeLimits()


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

    def seen_request(self, seq_id: int | None) -> tuple[str, list[str]] | None:
        """The request id and sequence ids a retried ``seq_id`` got the first time."""
        return None if seq_id is None else self.seen.get(seq_id)

    def remember(self, seq_id: int | None, request_id: str, ids: list[str]) -> None:
        if seq_id is not None:
            self.seen[seq_id] = (request_id, ids)
            while len(self.seen) > SEEN_SAMPLES:
                self.seen.popitem(last=False)


Owned = TypeVar("Owned", Model, Sampler)


class Tenancy:
    """The live sessions, models and samplers, each reachable only by its own tenant."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.models: dict[str, Model] = {}
        self.samplers: OrderedDict[str, Sampler] = OrderedDict()
        self._lock = threading.RLock()

    # -- sessions -------------------------------------------------------------------------

    def open_session(self, tenant: str) -> Session:
        session = Session(uuid.uuid4().hex, tenant, time.monotonic())
        with self._lock:
            live = sum(1 for s in self.sessions.values() if s.tenant == tenant and not s.ended)
            if live >= self.limits.max_sessions_per_tenant:
                raise busy(f"{live} sessions are open; finish some (or let them expire)")
            self.sessions[session.session_id] = session
        return session

    def session(self, tenant: str, session_id: str) -> Session:
        """The tenant's live session (a call on it counts as a heartbeat)."""
        with self._lock:
            session = self.sessions.get(session_id)
        if session is None or session.tenant != tenant:
            raise not_found(f"session {session_id!r}")
        if session.ended:
            raise ApiError(410, f"session {session_id!r} has ended")
        session.last_seen = time.monotonic()
        return session

    def end(self, session: Session, why: str) -> None:
        with self._lock:
            session.ended_at = time.monotonic()
            models = [self.models.pop(m) for m in session.models if m in self.models]
            for sampler_id in session.samplers:
                self.samplers.pop(sampler_id, None)
        for model in models:
            self._close(model)
        log.info("session_ended", session_id=session.session_id, why=why, models=len(models))

    def reap(self) -> None:
        """End the sessions whose heartbeats stopped; forget sessions ended more than
        ``keep_results_s`` ago."""
        now = time.monotonic()
        with self._lock:
            stale = [
                s
                for s in self.sessions.values()
                if not s.ended and now - s.last_seen > self.limits.session_timeout_s
            ]
            for s in list(self.sessions.values()):
                if s.ended_at is not None and now - s.ended_at > self.limits.keep_results_s:
                    del self.sessions[s.session_id]
        for session in stale:
            self.end(session, "heartbeats stopped")

    def close(self) -> None:
        with self._lock:
            sessions = [s for s in self.sessions.values() if not s.ended]
        for session in sessions:
            self.end(session, "server stopped")

    # -- models and samplers --------------------------------------------------------------

    def _owned(self, table: Mapping[str, Owned], key: str, tenant: str, what: str) -> Owned:
        """``table[key]`` if ``tenant`` owns it and its session lives (another tenant's is
        not found, as if it did not exist)."""
        with self._lock:
            found = table.get(key)
        if found is None or found.tenant != tenant:
            raise not_found(f"{what} {key!r}")
        self.session(tenant, found.session_id)
        return found

    def model(self, tenant: str, model_id: str) -> Model:
        return self._owned(self.models, model_id, tenant, "model")

    def sampler(self, tenant: str, sampler_id: str) -> Sampler:
        return self._owned(self.samplers, sampler_id, tenant, "sampler")

    def check_room_for(self, tenant: str, model_id: str) -> None:
        """Refuse a model id in use, or a tenant at its limit of loaded models."""
        with self._lock:
            if model_id in self.models:
                raise bad_request(f"model {model_id!r} exists already (model_seq_id reused)")
            live = sum(1 for m in self.models.values() if m.tenant == tenant)
            if live >= self.limits.max_models_per_tenant:
                raise busy(f"{live} models are loaded; unload some, or end their sessions")

    def add_model(self, model: Model) -> None:
        """Keep ``model`` for its session; forget it again if it never loads."""
        with self._lock:
            self.models[model.model_id] = model
            self.sessions[model.session_id].models.add(model.model_id)

        def forget_if_failed(f: Future[TrainingSession]) -> None:
            if f.exception() is not None:  # it never loaded: nothing to train or free
                with self._lock:
                    self.models.pop(model.model_id, None)

        model.training.add_done_callback(forget_if_failed)

    def unload(self, model: Model) -> None:
        with self._lock:
            self.models.pop(model.model_id, None)
            self.sessions[model.session_id].models.discard(model.model_id)
        self._close(model)

    def _close(self, model: Model) -> None:
        def close(f: Future[TrainingSession]) -> None:
            if f.exception() is None:
                f.result().close()

        model.training.add_done_callback(close)
        with self._lock:
            for sampler_id in model.samplers:
                self.samplers.pop(sampler_id, None)

    def add_sampler(self, sampler: Sampler, model: Model | None = None) -> None:
        with self._lock:
            self.samplers[sampler.sampler_id] = sampler
            session = self.sessions.get(sampler.session_id)
            if session is not None:
                session.samplers.add(sampler.sampler_id)
            if model is not None:  # the newest few of a model's ephemeral samplers are kept
                model.samplers.append(sampler.sampler_id)
                while len(model.samplers) > self.limits.max_samplers_per_model:
                    self.samplers.pop(model.samplers.pop(0), None)
