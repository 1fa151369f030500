"""A fake TrainingClient that trains for real, on a one-parameter model.

The model's per-token target logprob is ``logp_i = -c_i * (floor + (1 - floor) * exp(-k*θ))``,
where ``c_i`` is a deterministic difficulty of the (previous, target) token pair and θ is the
only parameter. Losses and their gradients come from galley's reference losses, and
``optim_step`` runs real AdamW on θ, so loss falls with steps, faster with a larger learning
rate, and every loss, clipping and weight-decay setting behaves the way it would on a real
model; all of it deterministic and microseconds per call.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from galley.adapters.helpers.faults import FaultInjector, Faults
from galley.adapters.helpers.request_queue import ImmediateQueue
from galley.adapters.noop.completer import NoopCompleter
from galley.adapters.noop.tokenizer import ByteTokenizer
from galley.core.domain.losses import REQUIRED_INPUTS, LossFn, reference_loss
from galley.core.domain.types import (
    AdamParams,
    CheckpointKind,
    CheckpointRef,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ModelInfo,
    OptimStepResult,
    SessionConfig,
)
from galley.core.errors import ValidationError
from galley.core.keys import check_name, join_key
from galley.core.runs.manifest import CheckpointMismatchError, read_checkpoint, write_checkpoint
from galley.ports.blobs import BlobStore

STATE_FILE = "state.json"
SAMPLER_FILE = "sampler.json"


@attrs.define
class _Params:
    theta: float = 0.0
    grad: float = 0.0
    m: float = 0.0
    v: float = 0.0
    step: int = 0


def difficulty(
    inputs: Sequence[int] | npt.NDArray[np.int64],
    targets: npt.NDArray[np.int64],
    vocab_size: int,
) -> npt.NDArray[np.float64]:
    """c_i in [0.5, 1.5] * ln(vocab): a fixed hash of (previous token, target token)."""
    # In int64: both products stay below 2**63 for any vocabulary under 2**31 ids, so this is
    # the unsigned hash's value, without converting the ids to uint64 first.
    mixed = np.asarray(inputs, dtype=np.int64) * 2654435761 ^ targets * 40503
    return (0.5 + (mixed % 1000) / 1000.0) * math.log(vocab_size)


def _loss_inputs(request: ForwardBackwardInput) -> dict[str, npt.NDArray[Any]]:
    """The loss inputs of every datum end to end; a datum without ``weights`` weighs 1."""
    loss = request.loss_fn
    inputs = {key: request.column(key) for key in REQUIRED_INPUTS[loss]}
    if loss is LossFn.CROSS_ENTROPY and request.has("weights"):
        inputs["weights"] = request.column("weights", fill=1.0)
    return inputs


class NoopTrainingSession:
    def __init__(
        self,
        config: SessionConfig,
        blobs: BlobStore,
        session_id: str,
        sensitivity: float,
        floor: float,
        faults: FaultInjector,
    ) -> None:
        self.config = config
        self._blobs = blobs
        self._id = session_id
        self._k = sensitivity
        self._floor = floor
        self._faults = faults
        self._tokenizer = ByteTokenizer()
        self._params = _Params()
        self._queue = ImmediateQueue(f"noop-session-{session_id}")

    @property
    def session_id(self) -> str:
        return self._id

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    @property
    def model_info(self) -> ModelInfo:
        rank = self.config.lora.rank
        return ModelInfo(
            name=self.config.base_model,
            vocab_size=self._tokenizer.vocab_size,
            max_context=4096,
            lora_rank=rank,
            num_parameters=1,
            num_trainable_parameters=1,
        )

    # -- requests ------------------------------------------------------------------------

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        request = self._validated(data, loss_fn, loss_fn_config, "forward")
        return self._queue.submit(lambda: self._run(request, accumulate=False))

    def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        request = self._validated(data, loss_fn, loss_fn_config, "forward_backward")
        return self._queue.submit(lambda: self._run(request, accumulate=True))

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self._faults("optim_step")
        return self._queue.submit(lambda: self._adamw(params))

    def save_state(self, name: str) -> Future[CheckpointRef]:
        check_name(name, "save_state.name")
        self._faults("save_state")
        return self._queue.submit(lambda: self._save("state", name))

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        self._faults("load_state")
        if ref.kind != "state":
            raise ValidationError("load_state.ref", f"expected a state checkpoint, got {ref.kind}")
        return self._queue.submit(lambda: self._load(ref))

    def load_weights(self, ref: CheckpointRef) -> Future[None]:
        self._faults("load_weights")
        return self._queue.submit(lambda: self._load_weights(ref))

    def save_weights_and_get_sampling_client(self) -> Future[NoopCompleter]:
        self._faults("save_weights_and_get_sampling_client")
        return self._queue.submit(self._sampling_client)

    def _sampling_client(self) -> NoopCompleter:
        """A completer whose log-probabilities are this model's as of now (so a learner sees
        the sampler's own on-policy) and whose samples vary less as ``scale`` falls."""
        scale, vocab = self._scale(), self._tokenizer.vocab_size

        def logprobs_of(prompt: Sequence[int], tokens: Sequence[int]) -> list[float]:
            previous = np.asarray([*prompt, *tokens][len(prompt) - 1 : -1], np.int64)
            logp = -scale * difficulty(previous, np.asarray(tokens, np.int64), vocab)
            return [float(x) for x in logp.astype(np.float32)]

        return NoopCompleter(vary=0.5 * scale, logprobs_of=logprobs_of)

    def save_weights_for_sampler(self, name: str) -> Future[CheckpointRef]:
        check_name(name, "save_weights_for_sampler.name")
        self._faults("save_weights_for_sampler")
        return self._queue.submit(lambda: self._save("sampler", name))

    def close(self) -> None:
        self._queue.close()

    def parameters(self) -> dict[str, float]:
        """The fake model's parameter, gradient and optimizer state (tests compare runs by it)."""
        return attrs.asdict(self._params)

    # -- the model -----------------------------------------------------------------------

    def _validated(
        self, data: Sequence[Datum], loss_fn: str, config: Mapping[str, float] | None, op: str
    ) -> ForwardBackwardInput:
        request = ForwardBackwardInput(data, loss_fn, dict(config or {}))
        request.check_vocabulary(self._tokenizer.vocab_size)
        self._faults(op)
        return request

    def _scale(self) -> float:
        return self._floor + (1.0 - self._floor) * math.exp(-self._k * self._params.theta)

    def _run(self, request: ForwardBackwardInput, *, accumulate: bool) -> ForwardBackwardOutput:
        # Losses are per-token sums, so the whole batch is one concatenated sequence.
        inputs = _loss_inputs(request)
        scale = self._scale()
        logp = difficulty(request.tokens(), inputs["target_tokens"], self._tokenizer.vocab_size)
        logp *= -scale
        loss, dloss_dlogp = reference_loss(request.loss_fn, logp, inputs, request.loss_fn_config)
        if accumulate:
            # dlogp/dθ = -c * (1 - floor) * (-k) * exp(-kθ) = logp * dscale/scale
            dscale = -(1.0 - self._floor) * self._k * math.exp(-self._k * self._params.theta)
            self._params.grad += float(dloss_dlogp @ logp) * dscale / scale
        metrics = {"loss:sum": loss, "tokens:sum": float(request.num_tokens)}
        return ForwardBackwardOutput.from_columns(
            {"logprobs": logp.astype(np.float32)}, request.lengths, metrics
        )

    def _adamw(self, hp: AdamParams) -> OptimStepResult:
        p = self._params
        g = p.grad
        grad_norm = abs(g)
        if not math.isfinite(grad_norm):  # skipped: weights and optimizer state unchanged
            p.step += 1
            p.grad = 0.0
            return OptimStepResult(p.step, hp.learning_rate, grad_norm, 0.0)
        if hp.grad_clip_norm > 0 and grad_norm > hp.grad_clip_norm:
            g *= hp.grad_clip_norm / grad_norm
        p.step += 1
        p.m = hp.beta1 * p.m + (1 - hp.beta1) * g
        p.v = hp.beta2 * p.v + (1 - hp.beta2) * g * g
        m_hat = p.m / (1 - hp.beta1**p.step)
        v_hat = p.v / (1 - hp.beta2**p.step)
        update = hp.learning_rate * (
            m_hat / (math.sqrt(v_hat) + hp.eps) + hp.weight_decay * p.theta
        )
        p.theta -= update
        p.grad = 0.0
        return OptimStepResult(p.step, hp.learning_rate, grad_norm, abs(update))

    def _save(self, kind: CheckpointKind, name: str) -> CheckpointRef:
        prefix = join_key(self.config.storage_prefix, kind, name)
        if kind == "state":
            filename, data = STATE_FILE, attrs.asdict(self._params)
        else:
            filename, data = SAMPLER_FILE, {"theta": self._params.theta}
        shape = {"base_model": self.config.base_model, "lora_rank": self.config.lora.rank}
        body = json.dumps({**data, **shape}).encode()
        write_checkpoint(
            self._blobs,
            prefix,
            kind=kind,
            name=name,
            run_id=self.config.run_id,
            step=self._params.step,
            files={filename: body},
        )
        return CheckpointRef(
            kind, name, prefix, self.config.run_id, self._params.step, self.config.base_model
        )

    def _load(self, ref: CheckpointRef) -> None:
        _, files = read_checkpoint(self._blobs, ref)
        if STATE_FILE not in files:
            raise CheckpointMismatchError(
                f"checkpoint {ref.key!r} was not saved by the noop training adapter "
                f"(it has no {STATE_FILE}): resume with the adapter that saved it"
            )
        data = json.loads(files[STATE_FILE])
        self._params = _Params(**{f.name: data[f.name] for f in attrs.fields(_Params)})

    def _load_weights(self, ref: CheckpointRef) -> None:
        """The parameter only; the optimizer's moments and step start anew."""
        _, files = read_checkpoint(self._blobs, ref)
        data = json.loads(files.get(STATE_FILE) or files.get(SAMPLER_FILE) or b"{}")
        if "theta" not in data:
            raise CheckpointMismatchError(f"{ref.key!r} holds no weights of the noop model")
        for field, mine in (
            ("base_model", self.config.base_model),
            ("lora_rank", self.config.lora.rank),
        ):
            theirs = data.get(field, mine)
            if theirs != mine:
                raise ValidationError(
                    "load_weights",
                    f"{ref.key!r} has {field} {theirs!r}; this session has {mine!r}",
                )
        self._params = _Params(theta=data["theta"])


class NoopTrainingClient:
    """Sessions of the one-parameter fake model, saving state through ``blobs``.

    ``sensitivity`` is how fast loss responds to the parameter (higher: faster learning at a
    given LR); ``floor`` is the fraction of the initial loss that cannot be learned away.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        sensitivity: float = 100.0,
        floor: float = 0.05,
        faults: Faults | None = None,
    ) -> None:
        self.blobs = blobs
        self.sensitivity = sensitivity
        self.floor = floor
        self.faults = FaultInjector(faults)
        self._ids = itertools.count(1)

    def start_session(self, config: SessionConfig) -> NoopTrainingSession:
        self.faults("start_session")
        return NoopTrainingSession(
            config, self.blobs, f"noop-{next(self._ids)}", self.sensitivity, self.floor, self.faults
        )
