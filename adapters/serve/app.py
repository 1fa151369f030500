"""The HTTP face of ``galley serve``: the Tinker API's endpoints, as a FastAPI app.

Every request but ``healthz`` needs a valid ``X-API-Key`` (401 otherwise). A malformed body
or an unsupported feature is a 4xx naming it, never a 5xx: the server keeps serving. Bodies
past ``max_body_bytes`` are refused with 413 before they are read whole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import attrs
import pydantic
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from tinker import types as tt

from galley.adapters.serve import wire
from galley.adapters.serve.errors import ApiError, bad_request, describe, failure_category
from galley.adapters.serve.keys import KeyRing
from galley.adapters.serve.requests import wait_for
from galley.adapters.serve.service import TinkerService
from galley.core.errors import GalleyError

PROTOBUF = "application/x-protobuf"
API = "/api/v1"
HEALTHZ = f"{API}/healthz"
Message = TypeVar("Message", bound=pydantic.BaseModel)
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class _BodyTooLargeError(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body past ``limit`` bytes gets 413, counted as it arrives (a
    ``Content-Length`` over the limit is refused before reading any of it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _refuse(send, 413, f"the body is over {self.limit} bytes")
            return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLargeError
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLargeError:
            if not started:
                await _refuse(send, 413, f"the body is over {self.limit} bytes")


class KeyCheck:
    """ASGI middleware: every request but ``healthz`` carries a key of ``keys`` (401 before
    anything else is looked at); its tenant goes to ``request.state.tenant``."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == HEALTHZ:
            await self.app(scope, receive, send)
            return
        key = dict(scope.get("headers") or []).get(b"x-api-key")
        tenant = self.keys.tenant(key.decode("latin-1") if key is not None else None)
        if tenant is None:
            await _refuse(send, 401, "missing or unknown API key (header X-API-Key)")
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WeightsInfoRequest(pydantic.BaseModel):
    tinker_path: str


def parse(kind: type[Message], body: bytes) -> Message:
    try:
        return kind.model_validate_json(body)
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        raise bad_request(f"not a valid {kind.__name__}: {problems}") from None


def client_config() -> dict[str, Any]:
    """The SDK's feature flags, set to what this server does: API keys (no JWT exchange),
    uncompressed protobuf forward_backward, per-request polling, custom losses client-side."""
    return tt.ClientConfigResponse(
        pjwt_auth_enabled=False,
        proto_compress_fwdbwd=False,
        sample_use_retrieve_futures=False,
        custom_loss_server_side=False,
        sample_join_sampling_session=False,
    ).model_dump(mode="json")


def create_app(service: TinkerService, keys: KeyRing, *, reap_every_s: float = 5.0) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def reaper() -> None:
            while True:
                await asyncio.sleep(reap_every_s)
                await asyncio.to_thread(service.reap)

        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()
            service.close()

    app = FastAPI(title="galley serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    # Added last runs first: the key is checked before any of the body is read.
    app.add_middleware(BodyLimit, limit=service.limits.max_body_bytes)
    app.add_middleware(KeyCheck, keys=keys)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    @app.exception_handler(GalleyError)
    async def galley_error(_: Request, e: GalleyError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": str(e.errors()[:3])}, status_code=400)

    @app.get(HEALTHZ)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for routes in (_message_routes, _service_routes, _body_routes, _run_routes):
        app.include_router(routes(service), prefix=API)
    for name, feature in UNSUPPORTED.items():
        _refuse_route(app, f"{API}/{name}", feature)
    return app


def tenant(request: Request) -> str:
    """Set by ``KeyCheck`` before the request got here."""
    who: str = request.state.tenant
    return who


async def body(request: Request, kind: type[Message]) -> tuple[str, Message]:
    return tenant(request), parse(kind, await request.body())


Answer = Callable[[str, Any], dict[str, Any]]  # (tenant, message) -> the response


@attrs.frozen
class MessageRoute:
    """A POST endpoint whose body is one message of the SDK's, answered by a service's method
    (``answer(service)``); ``off_loop`` ones touch storage or the device, so they run in a
    thread, off the event loop."""

    path: str
    message: type[pydantic.BaseModel]
    answer: Callable[[TinkerService], Answer]
    off_loop: bool = False


MESSAGE_ROUTES = (
    MessageRoute("/create_session", tt.CreateSessionRequest, lambda s: s.create_session),
    MessageRoute("/create_model", tt.CreateModelRequest, lambda s: s.training.create_model, True),
    MessageRoute("/get_info", tt.GetInfoRequest, lambda s: s.training.get_info, True),
    MessageRoute("/optim_step", tt.OptimStepRequest, lambda s: s.training.optim_step, True),
    MessageRoute("/unload_model", tt.UnloadModelRequest, lambda s: s.training.unload_model),
    MessageRoute("/save_weights", tt.SaveWeightsRequest, lambda s: s.weights.save_weights, True),
    MessageRoute("/load_weights", tt.LoadWeightsRequest, lambda s: s.weights.load_weights, True),
    MessageRoute(
        "/save_weights_for_sampler",
        tt.SaveWeightsForSamplerRequest,
        lambda s: s.weights.save_weights_for_sampler,
        True,
    ),
    MessageRoute(
        "/create_sampling_session",
        tt.CreateSamplingSessionRequest,
        lambda s: s.samplers.create_sampling_session,
        True,
    ),
    MessageRoute("/asample", tt.SampleRequest, lambda s: s.samplers.asample),
)


def _message_routes(service: TinkerService) -> APIRouter:
    """Every ``MESSAGE_ROUTES`` entry as an endpoint."""
    r = APIRouter()
    for route in MESSAGE_ROUTES:
        r.add_api_route(route.path, _handler(service, route), methods=["POST"])
    return r


def _handler(
    service: TinkerService, route: MessageRoute
) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    answer = route.answer(service)

    async def handle(request: Request) -> dict[str, Any]:
        who, message = await body(request, route.message)
        if route.off_loop:
            return await asyncio.to_thread(answer, who, message)
        return answer(who, message)

    handle.__name__ = route.path.strip("/")
    return handle


def _service_routes(service: TinkerService) -> APIRouter:
    """Client configuration, sessions and heartbeats."""
    r = APIRouter()

    @r.post("/client/config")
    async def config(request: Request) -> dict[str, Any]:
        await body(request, tt.ClientConfigRequest)
        return client_config()

    @r.post("/client/dynamic_config")
    async def dynamic_config(request: Request) -> dict[str, Any]:
        await body(request, tt.ClientConfigRequest)
        return tt.ClientDynamicConfigResponse().model_dump(mode="json")

    @r.get("/get_server_capabilities")
    async def capabilities() -> dict[str, Any]:
        return service.capabilities()

    @r.post("/telemetry")
    async def telemetry() -> dict[str, str]:
        return {"status": "accepted"}  # the SDK's own events: accepted and dropped

    @r.post("/session_heartbeat")
    async def heartbeat(request: Request) -> dict[str, Any]:
        who, message = await body(request, tt.SessionHeartbeatRequest)
        return service.heartbeat(who, message.session_id)

    @r.post("/sessions/{session_id}/finish")
    async def finish(session_id: str, request: Request) -> dict[str, Any]:
        service.end_session(tenant(request), session_id)
        return {}

    @r.post("/retrieve_future")
    async def retrieve_future(request: Request) -> Response:
        who, message = await body(request, tt.FutureRetrieveRequest)
        pending = service.requests.get(message.request_id, who)
        try:
            reply = await wait_for(pending, service.limits.poll_s)
        except Exception as e:  # the request failed: its error is the answer, not a 5xx
            return JSONResponse({"error": describe(e), "category": failure_category(e)})
        if reply is None:
            queued = {
                "type": "try_again",
                "request_id": pending.request_id,
                "queue_state": "active",
            }
            return JSONResponse(queued)
        if isinstance(reply, bytes):
            return Response(reply, media_type=PROTOBUF)
        return JSONResponse(dict(reply))

    @r.post("/cancel_future")
    async def cancel_future() -> dict[str, Any]:
        return {}  # work already queued runs to its end; its result is dropped later

    return r


def _body_routes(service: TinkerService) -> APIRouter:
    """The endpoints whose request is not one JSON message: the protobuf forward_backward (its
    work runs off the loop), and a sampler named in the path."""
    r = APIRouter()

    @r.post("/forward_backward")
    async def forward_backward(request: Request) -> dict[str, Any]:
        if request.headers.get("content-encoding", "identity") != "identity":
            raise bad_request("compressed bodies are not accepted (send it uncompressed)")
        call = wire.read_forward_backward(await request.body())
        return await asyncio.to_thread(service.training.forward_backward, tenant(request), call)

    @r.get("/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str, request: Request) -> dict[str, Any]:
        return service.samplers.get_sampler(tenant(request), sampler_id)

    return r


def _run_routes(service: TinkerService) -> APIRouter:
    """The RestClient's training runs and checkpoints (blob-store reads: on the threadpool)."""
    r = APIRouter()

    @r.get("/training_runs")
    def training_runs(request: Request, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        return service.catalog.training_runs(tenant(request), _page(limit), max(offset, 0))

    @r.get("/training_runs/{run_id}")
    def training_run(run_id: str, request: Request) -> dict[str, Any]:
        return service.catalog.training_run(tenant(request), run_id)

    @r.get("/training_runs/{run_id}/checkpoints")
    def checkpoints(run_id: str, request: Request) -> dict[str, Any]:
        return service.catalog.checkpoints(tenant(request), run_id)

    @r.delete("/training_runs/{run_id}/checkpoints/{checkpoint_id:path}")
    def delete_checkpoint(run_id: str, checkpoint_id: str, request: Request) -> Response:
        service.catalog.delete_checkpoint(tenant(request), run_id, checkpoint_id)
        return Response(status_code=204)

    @r.get("/checkpoints")
    def user_checkpoints(request: Request, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return service.catalog.user_checkpoints(tenant(request), _page(limit), max(offset, 0))

    @r.post("/weights_info")
    async def weights_info(request: Request) -> dict[str, Any]:
        who, message = await body(request, WeightsInfoRequest)
        return await asyncio.to_thread(service.catalog.weights_info, who, message.tinker_path)

    return r


# Endpoints the SDK has that galley serve does not back; each answers 400 naming the feature.
UNSUPPORTED = {
    "create_custom_loss": "server-side custom losses (they run client-side)",
    "copy_weights": "copying weights between projects",
    "save_weights_external": "external weights",
    "join_sampling_session": "joining sampling sessions",
    "retrieve_futures": "session-wide future polling",
    "auth/token": "JWT exchange (API keys only)",
}


def _refuse_route(app: FastAPI, path: str, feature: str) -> None:
    async def refuse() -> None:
        raise ApiError(400, f"galley serve does not support {feature}")

    app.add_api_route(path, refuse, methods=["GET", "POST", "PUT", "DELETE"])


def _page(limit: int) -> int:
    return min(max(limit, 1), 1000)
