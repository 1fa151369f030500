"""`galley serve` driven by the unmodified official `tinker` SDK, and by raw HTTP for what the
SDK never sends (malformed bodies, other tenants, out-of-order and repeated requests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from galley.adapters.cli import main
from galley.adapters.noop import noop_adapters
from galley.adapters.serve import (
    BackgroundServer,
    KeyRing,
    ServeLimits,
    TinkerService,
    create_app,
)
from galley.adapters.serve.errors import ApiError
from galley.core.domain.types import Datum as GalleyDatum
from galley.core.domain.types import LoraConfig, SessionConfig
from tests.conftest import free_port
from tests.tinker_server import jax_adapters, wait_until_serving

BASE = "galley/tiny-lm"
ALICE, BOB = "tml-alice-key", "tml-bob-key"


@pytest.fixture(autouse=True)
def _sdk_warnings() -> Iterator[None]:
    with warnings.catch_warnings():  # the SDK's own deprecation notices about its API
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.fixture(scope="module")
def jax_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TinkerService]]:
    """The JAX adapter on the embedded model, with two tenants' keys."""
    service = TinkerService(jax_adapters(tmp_path_factory.mktemp("serve")))
    keys = KeyRing.of({ALICE: "alice", BOB: "bob"}, "test")
    with BackgroundServer(create_app(service, keys)) as server:
        yield server.url, service


@pytest.fixture
def noop_server() -> Iterator[tuple[str, TinkerService]]:
    """Fakes behind the server, open (any tml- key), with short timeouts and small bounds."""
    limits = ServeLimits(
        max_body_bytes=1 << 16, max_waiting_per_model=4, poll_s=2.0, session_timeout_s=1.0
    )
    service = TinkerService(noop_adapters(), limits=limits)
    with BackgroundServer(create_app(service, KeyRing(), reap_every_s=0.1)) as server:
        yield server.url, service
        _end_open_sessions()  # while the server still answers


def _datum(tokens: list[int], **extra: list[float]) -> types.Datum:
    inputs: dict[str, Any] = {"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)}
    inputs.update(extra)
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


OPEN: list[Any] = []  # the SDK clients a test made, ended after it


def _end_open_sessions() -> None:
    while OPEN:
        OPEN.pop().close("success").result()


@pytest.fixture(autouse=True)
def _end_sdk_sessions() -> Iterator[None]:
    yield
    _end_open_sessions()


def _client(url: str, key: str) -> Any:
    service = tinker.ServiceClient(base_url=url, api_key=key)
    OPEN.append(service)
    return service


def _lora(url: str, key: str = ALICE, rank: int = 4) -> tuple[Any, Any]:
    service = _client(url, key)
    return service, service.create_lora_training_client(base_model=BASE, rank=rank, seed=3).result()


# -- the SDK against the JAX adapter ----------------------------------------------------


def test_sdk_round_trip(jax_server: tuple[str, TinkerService]) -> None:
    url, _ = jax_server
    service, trainer = _lora(url)
    tok = trainer.get_tokenizer()  # a local folder AutoTokenizer loads offline
    assert tok.decode(tok.encode("red boat")) == "red boat"
    ids = tok.encode("Shout this: red boat\nRED BOAT")
    n = len(ids) - 1
    datum = _datum(ids)
    rl = _datum(ids, logprobs=[-1.0] * n, advantages=[0.5] * n)
    outputs = {
        loss: trainer.forward_backward([rl if loss != "cross_entropy" else datum], loss).result()
        for loss in ("cross_entropy", "importance_sampling", "ppo", "cispo")
    }
    for out in outputs.values():
        assert out.loss_fn_outputs[0]["logprobs"].shape == [n]
        assert np.isfinite(out.metrics["loss:sum"])
    step = trainer.optim_step(types.AdamParams(learning_rate=1e-2, grad_clip_norm=1.0)).result()
    assert step.metrics["step:max"] == 1.0 and step.metrics["grad_norm:mean"] > 1.0
    after = trainer.forward([datum], "cross_entropy").result()
    assert after.metrics["loss:sum"] < outputs["cross_entropy"].metrics["loss:sum"]

    state = trainer.save_state("s1").result().path
    named = trainer.save_weights_for_sampler("w1").result().path
    assert state.endswith("/weights/s1") and named.endswith("/sampler_weights/w1")
    prompt = types.ModelInput.from_ints(tok.encode("Shout this: red boat\n"))
    params = types.SamplingParams(max_tokens=6, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    live = trainer.save_weights_and_get_sampling_client()
    first = live.sample(prompt, 3, params).result()
    again = live.sample(prompt, 3, params).result()
    assert len(first.sequences) == 3 and len({s.sequence_id for s in first.sequences}) == 3
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]  # seeded
    assert all(len(s.logprobs or []) == len(s.tokens) for s in first.sequences)
    greedy = types.SamplingParams(max_tokens=8, temperature=0.0, stop=["\n"])
    saved = service.create_sampling_client(model_path=named).result()
    from_saved = saved.sample(prompt, 1, greedy).result().sequences[0]
    assert from_saved.tokens == live.sample(prompt, 1, greedy).result().sequences[0].tokens
    assert "\n" not in tok.decode(from_saved.tokens[:-1])
    logprobs = live.compute_logprobs(types.ModelInput.from_ints(ids)).result()
    assert logprobs[0] is None and np.allclose(
        logprobs[1:], after.loss_fn_outputs[0]["logprobs"].tolist(), atol=1e-4
    )

    rest = tinker.RestClient(base_url=url, api_key=ALICE)
    run = rest.get_training_run(trainer.model_id).result()
    assert run.base_model == BASE and run.lora_rank == 4
    listed = [c.tinker_path for c in rest.list_checkpoints(trainer.model_id).result().checkpoints]
    assert listed == [state, named]
    rest.delete_checkpoint_from_tinker_path(named).result()
    assert [
        c.tinker_path for c in rest.list_checkpoints(trainer.model_id).result().checkpoints
    ] == [state]
    with pytest.raises(tinker.APIStatusError, match="exists"):
        trainer.save_state("s1").result()  # never overwritten by a reused name
    with pytest.raises(tinker.APIStatusError, match="plain name"):
        trainer.save_state("../escape").result()


def test_step0_logprobs_equal_an_in_process_jax_session(
    jax_server: tuple[str, TinkerService],
) -> None:
    url, service = jax_server
    _, trainer = _lora(url)
    ids = list(range(3, 40))
    served = trainer.forward([_datum(ids)], "cross_entropy").result()
    session = service.adapters.training.start_session(
        SessionConfig(BASE, LoraConfig(rank=4, seed=3))
    )
    local = session.forward([GalleyDatum.from_tokens(ids, [1.0] * len(ids))]).result()
    np.testing.assert_array_equal(
        served.loss_fn_outputs[0]["logprobs"].to_numpy(),
        local.loss_fn_outputs[0]["logprobs"].to_numpy(),
    )
    session.close()


def test_client_from_state_with_optimizer_continues_exactly(
    jax_server: tuple[str, TinkerService],
) -> None:
    url, _ = jax_server
    service, original = _lora(url)
    batch = [_datum(list(range(5, 30))), _datum(list(range(40, 52)))]
    adam = types.AdamParams(learning_rate=2e-2)

    def steps(trainer: Any, n: int) -> list[float]:
        losses = []
        for _ in range(n):
            losses.append(
                trainer.forward_backward(batch, "cross_entropy").result().metrics["loss:sum"]
            )
            trainer.optim_step(adam).result()
        return losses

    steps(original, 2)
    path = original.save_state("mid").result().path
    expected = steps(original, 2)
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    assert steps(resumed, 2) == expected
    # Weights only: the optimizer starts anew, so the second step differs.
    fresh = service.create_training_client_from_state(path).result()
    got = steps(fresh, 2)
    assert got[0] == expected[0] and got[1] != expected[1]


def test_lora_clients_of_one_base_share_its_weights(jax_server: tuple[str, TinkerService]) -> None:
    url, service = jax_server
    _, a = _lora(url, rank=4)
    _, b = _lora(url, rank=8)
    sessions = [service.tenancy.models[t.model_id].training.result() for t in (a, b)]
    import jax

    shared = zip(
        jax.tree.leaves(sessions[0]._frozen), jax.tree.leaves(sessions[1]._frozen), strict=True
    )
    assert all(x is y for x, y in shared)


def test_keys_and_tenants(jax_server: tuple[str, TinkerService]) -> None:
    url, _ = jax_server
    assert httpx.post(f"{url}/api/v1/create_session", json={}).status_code == 401
    wrong = httpx.post(f"{url}/api/v1/create_session", json={}, headers={"X-API-Key": "tml-nope"})
    assert wrong.status_code == 401
    with pytest.raises(tinker.AuthenticationError):
        tinker.ServiceClient(base_url=url, api_key="tml-nope").create_lora_training_client(
            base_model=BASE, rank=4
        ).result()
    alice, trainer = _lora(url)
    path = trainer.save_state("mine").result().path
    sampler_path = trainer.save_weights_for_sampler("mine").result().path
    bob = _client(url, BOB)
    with pytest.raises(Exception, match="not found"):
        bob.create_training_client_from_state(path).result()
    with pytest.raises(Exception, match="not found"):
        bob.create_sampling_client(model_path=sampler_path).result()
    bob_rest = tinker.RestClient(base_url=url, api_key=BOB)
    with pytest.raises(tinker.NotFoundError):
        bob_rest.list_checkpoints(trainer.model_id).result()
    with pytest.raises(tinker.NotFoundError):
        bob_rest.delete_checkpoint_from_tinker_path(path).result()
    assert trainer.model_id not in [
        r.training_run_id for r in bob_rest.list_training_runs().result().training_runs
    ]
    # Bob's key can't train Alice's model either (the SDK never would; raw HTTP can).
    raw = _post(url, "forward_backward", _fb(trainer.model_id, 99), key=BOB)
    assert raw.status_code == 404
    # A new client with Alice's key resumes her checkpoint.
    again = _client(url, ALICE)
    assert again.create_training_client_from_state_with_optimizer(path).result().model_id
    assert alice  # her first session is still alive


# -- the protocol, on fakes ------------------------------------------------------------


def _post(url: str, path: str, body: Any, key: str = "tml-local", **kw: Any) -> httpx.Response:
    headers = {"X-API-Key": key}
    if isinstance(body, bytes):
        return httpx.post(f"{url}/api/v1/{path}", content=body, headers=headers, **kw)
    return httpx.post(f"{url}/api/v1/{path}", json=body, headers=headers, **kw)


def _session_and_model(url: str) -> tuple[str, str]:
    session = _post(url, "create_session", {"tags": [], "user_metadata": None, "sdk_version": "x"})
    session_id = session.json()["session_id"]
    created = _post(
        url,
        "create_model",
        {
            "session_id": session_id,
            "model_seq_id": 0,
            "base_model": "any",
            "lora_config": {"rank": 4},
        },
    )
    model_id = created.json()["model_id"]
    assert "model_id" in _result(url, created.json()["request_id"])
    return session_id, model_id


def _result(url: str, request_id: str) -> Any:
    for _ in range(50):
        r = _post(url, "retrieve_future", {"request_id": request_id})
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("application/x-protobuf"):
            out = pb.ForwardBackwardOutput()
            out.ParseFromString(r.content)
            return out
        if r.json().get("type") != "try_again":
            return r.json()
    raise AssertionError("no result")


def _fb(model_id: str, seq: int, forward_only: bool = False) -> bytes:
    msg = pb.ForwardBackwardRequest(
        model_id=model_id, seq_id=seq, loss_fn="cross_entropy", forward_only=forward_only
    )
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = np.arange(1, 9, dtype=np.int32).tobytes()
    d.loss_fn_inputs["target_tokens"].dtype = pb.DTYPE_INT64
    d.loss_fn_inputs["target_tokens"].dense = np.arange(2, 10, dtype=np.int64).tobytes()
    return msg.SerializeToString()


def test_requests_run_in_seq_order_and_a_retry_runs_once(
    noop_server: tuple[str, TinkerService],
) -> None:
    url, _ = noop_server
    _, model = _session_and_model(url)
    optim = {"model_id": model, "seq_id": 3, "adam_params": {"learning_rate": 0.1}}
    # Sent last first: seq 4 (a forward after the update), 3 (the update), 2, 1.
    later = _post(url, "forward_backward", _fb(model, 4, forward_only=True)).json()["request_id"]
    step = _post(url, "optim_step", optim).json()["request_id"]
    grad = _post(url, "forward_backward", _fb(model, 2)).json()["request_id"]
    before = _post(url, "forward_backward", _fb(model, 1, forward_only=True)).json()["request_id"]
    retried = _post(url, "forward_backward", _fb(model, 2)).json()["request_id"]
    assert retried == grad
    loss_before = _result(url, before).metrics["loss:sum"]
    assert _result(url, later).metrics["loss:sum"] < loss_before
    once = _result(url, step)["metrics"]["grad_norm:mean"]
    # The same on a second model, without the retry: the same gradient, so it ran once.
    _, other = _session_and_model(url)
    _result(url, _post(url, "forward_backward", _fb(other, 1)).json()["request_id"])
    twin = _post(url, "optim_step", {**optim, "model_id": other, "seq_id": 2}).json()
    assert _result(url, twin["request_id"])["metrics"]["grad_norm:mean"] == once


def test_a_session_without_heartbeats_expires_and_frees_its_models(
    noop_server: tuple[str, TinkerService],
) -> None:
    url, service = noop_server
    alive, kept = _session_and_model(url)
    dead, freed = _session_and_model(url)
    for _ in range(100):  # heartbeats for one of them only, until the other's model is freed
        assert _post(url, "session_heartbeat", {"session_id": alive}).status_code == 200
        if freed not in service.tenancy.models:
            break
        time.sleep(0.1)
    assert kept in service.tenancy.models and freed not in service.tenancy.models
    assert _post(url, "session_heartbeat", {"session_id": dead}).status_code == 410
    assert _post(url, "get_info", {"model_id": freed}).status_code in (404, 410)


def test_bodies_and_queues_are_bounded(noop_server: tuple[str, TinkerService]) -> None:
    url, _ = noop_server
    _, model = _session_and_model(url)
    big = _post(url, "forward_backward", b"\0" * (1 << 17))
    assert big.status_code == 413
    # seq 1 never comes: four requests wait for it, the fifth is refused (the SDK retries 429).
    waiting = [_post(url, "forward_backward", _fb(model, s)) for s in range(2, 7)]
    assert [r.status_code for r in waiting] == [200, 200, 200, 200, 429]
    # A long poll answers within its bound (2 s here, 20 s by default; the SDK waits 45 s).
    poll = _post(url, "retrieve_future", {"request_id": waiting[0].json()["request_id"]})
    assert poll.json()["type"] == "try_again"


def test_the_sdks_client_side_custom_loss_runs(noop_server: tuple[str, TinkerService]) -> None:
    url, _ = noop_server
    trainer = (
        _client(url, "tml-local").create_lora_training_client(base_model="any", rank=4).result()
    )
    datum = _datum(list(range(1, 12)))
    plain = trainer.forward([datum], "cross_entropy").result().metrics["loss:sum"]

    def nll(_: Any, logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        total = sum(-lp.sum() for lp in logprobs)
        return total, {"nll:sum": float(total.detach())}

    custom = trainer.forward_backward_custom([datum], nll).result()
    assert custom.metrics["nll:sum"] == pytest.approx(plain, rel=1e-5)


def test_unsupported_features_are_named(noop_server: tuple[str, TinkerService]) -> None:
    url, _ = noop_server
    session, model = _session_and_model(url)
    msg = pb.ForwardBackwardRequest(model_id=model, seq_id=1, loss_fn="cross_entropy")
    msg.data.add().model_input.add().image.data = b"png"
    image = _post(url, "forward_backward", msg.SerializeToString())
    assert image.status_code == 400 and "image chunks" in image.json()["detail"]
    sampler = _post(
        url,
        "create_sampling_session",
        {"session_id": session, "sampling_session_seq_id": 0, "base_model": "any"},
    )
    topk = _post(
        url,
        "asample",
        {
            "sampling_session_id": sampler.json()["sampling_session_id"],
            "prompt": {"chunks": [{"tokens": [1, 2], "type": "encoded_text"}]},
            "sampling_params": {"max_tokens": 2},
            "topk_prompt_logprobs": 3,
        },
    )
    assert topk.status_code == 400 and "topk_prompt_logprobs" in topk.json()["detail"]
    custom = _post(url, "create_custom_loss", {})
    assert custom.status_code == 400 and "custom losses" in custom.json()["detail"]


ENDPOINTS = [
    "create_session",
    "session_heartbeat",
    "create_model",
    "get_info",
    "forward_backward",
    "optim_step",
    "save_weights",
    "load_weights",
    "save_weights_for_sampler",
    "create_sampling_session",
    "asample",
    "retrieve_future",
    "unload_model",
    "weights_info",
    "client/config",
    "telemetry",
    "sessions/x/finish",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)
fields = st.sampled_from(
    [
        "session_id",
        "model_id",
        "request_id",
        "seq_id",
        "path",
        "base_model",
        "model_seq_id",
        "prompt",
        "sampling_params",
        "tinker_path",
        "tags",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=st.binary(max_size=64)
    | st.dictionaries(fields, json_values, max_size=5).map(lambda d: d)
    | json_values,
)
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(
    noop_server: tuple[str, TinkerService], endpoint: str, body: Any
) -> None:
    url, _ = noop_server
    if isinstance(body, bytes):
        response = _post(url, endpoint, body)
    else:
        response = httpx.post(f"{url}/api/v1/{endpoint}", json=body, headers={"X-API-Key": "tml-x"})
    assert 200 <= response.status_code < 500, (endpoint, body, response.text)
    assert httpx.get(f"{url}/api/v1/healthz").status_code == 200


def test_cli_refuses_an_open_server_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "loopback only" in capsys.readouterr().out
    keys = tmp_path / "keys.toml"
    keys.write_text('"abc" = "alice"\n')
    assert main(["serve", "--keys-file", str(keys)]) == 2
    assert "must start with 'tml-'" in capsys.readouterr().out


def test_readme_commands_serve_and_train(tmp_path: Path) -> None:
    """`galley serve` with no options but a port, then the README's SDK script against it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    script = re.findall(r"```py\n(.*?)```", readme, flags=re.S)
    assert len(script) == 1, "the README's SDK script is its one ```py block"
    (tmp_path / "train.py").write_text(script[0])
    port = free_port()
    galley = Path(sys.executable).with_name("galley")
    server = subprocess.Popen(
        [str(galley), "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url)
        env = {**os.environ, "TINKER_API_KEY": "tml-local", "TINKER_BASE_URL": url}
        done = subprocess.run(
            [sys.executable, "train.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        losses = [float(x) for x in re.findall(r"step \d: loss ([\d.]+)", done.stdout)]
        assert len(losses) == 5 and losses[-1] < losses[0]
        assert list((tmp_path / "runs" / "serve" / "local").iterdir())  # under runs/, as all is
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert "loopback only, any tml- key accepted" in out


def test_ended_sessions_are_forgotten_after_a_while() -> None:
    """An ended session answers 410 for ``keep_results_s``, then is dropped (no unbounded
    growth in a long-running server)."""
    service = TinkerService(noop_adapters(), limits=ServeLimits(keep_results_s=0.0))
    request = types.CreateSessionRequest(tags=[], user_metadata=None, sdk_version="x")
    session_id = service.create_session("t", request)["session_id"]
    service.end_session("t", session_id)
    with pytest.raises(ApiError) as ended:
        service.heartbeat("t", session_id)
    assert ended.value.status == 410
    time.sleep(0.01)
    service.reap()
    with pytest.raises(ApiError) as gone:
        service.heartbeat("t", session_id)
    assert gone.value.status == 404
    service.close()
