"""Training and sampling types (the Tinker API's semantics).

All are frozen attrs classes that validate on construction, so a malformed request fails where
it is built, naming the field, instead of deep inside an adapter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.checks import (
    at_least,
    float_tuple,
    in_range,
    int_at_least,
    int_tuple,
    non_empty,
    one_of,
    safe_name,
)
from galley.core.domain.losses import REQUIRED_INPUTS, LossFn, parse_loss_fn, resolve_loss_config
from galley.core.domain.model_input import ModelInput
from galley.core.domain.tensors import TensorData
from galley.core.errors import ValidationError

# Per-token loss inputs every adapter understands, with the dtype each must have.
KNOWN_LOSS_INPUTS: Mapping[str, str] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
}
_KNOWN_DTYPES = {key: np.dtype(name) for key, name in KNOWN_LOSS_INPUTS.items()}


def _tensor_map(value: Mapping[str, Any]) -> dict[str, TensorData]:
    return {
        str(k): v if isinstance(v, TensorData) else TensorData.from_numpy(v)
        for k, v in value.items()
    }


@attrs.frozen
class Datum:
    """One training sequence: what the model reads and the per-token inputs of its loss.

    Every known per-token input (``target_tokens``, ``weights``, ``advantages``, ``logprobs``)
    is 1-D with one entry per input token: position i holds the target that follows token i.
    """

    model_input: ModelInput
    loss_fn_inputs: Mapping[str, TensorData] = attrs.field(converter=_tensor_map, factory=dict)

    def __attrs_post_init__(self) -> None:
        n = self.model_input.length
        for key, tensor in self.loss_fn_inputs.items():
            expected = _KNOWN_DTYPES.get(key)
            if expected is None or (tensor.data.dtype == expected and tensor.data.shape == (n,)):
                continue
            field = f"Datum.loss_fn_inputs[{key!r}]"
            if tensor.dtype != expected:
                raise ValidationError(field, f"expected dtype {expected}, got {tensor.dtype}")
            raise ValidationError(
                field,
                f"shape {tensor.shape} does not match model_input length {n}; expected ({n},)",
            )

    @classmethod
    def from_tokens(
        cls, tokens: Sequence[int], weights: Sequence[float] | npt.NDArray[Any]
    ) -> Datum:
        """Next-token datum from a full sequence and its per-token weights (weights[0] unused)."""
        if len(tokens) != len(weights):
            raise ValidationError(
                "Datum.from_tokens", f"{len(tokens)} tokens but {len(weights)} weights"
            )
        if len(tokens) < 2:
            raise ValidationError("Datum.from_tokens", "need at least 2 tokens to predict one")
        return cls(
            ModelInput.from_ints(tokens[:-1]),
            {
                "target_tokens": TensorData(np.asarray(tokens[1:], dtype=np.int64)),
                "weights": TensorData(np.asarray(weights[1:], dtype=np.float32)),
            },
        )

    @property
    def num_loss_tokens(self) -> float:
        """Sum of weights (the number of trained tokens for 0/1 weights)."""
        weights = self.loss_fn_inputs.get("weights")
        return float(weights.data.sum()) if weights is not None else float(self.model_input.length)


def _loss_fn(value: Any) -> LossFn:
    return parse_loss_fn(value, "ForwardBackwardInput.loss_fn")


def _datums(value: Iterable[Datum]) -> tuple[Datum, ...]:
    return tuple(value)


@attrs.frozen
class ForwardBackwardInput:
    """A validated ``forward``/``forward_backward`` request: data, loss and its config.

    Losses are sums over tokens, so an adapter may read the whole request as one sequence:
    ``tokens()`` and ``column(key)`` are every datum's arrays end to end."""

    data: tuple[Datum, ...] = attrs.field(converter=_datums)
    loss_fn: LossFn = attrs.field(default=LossFn.CROSS_ENTROPY, converter=_loss_fn)
    loss_fn_config: Mapping[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.data:
            raise ValidationError("ForwardBackwardInput.data", "expected at least one Datum")
        required = REQUIRED_INPUTS[self.loss_fn]
        for i, datum in enumerate(self.data):
            missing = [k for k in required if k not in datum.loss_fn_inputs]
            if missing:
                raise ValidationError(
                    f"ForwardBackwardInput.data[{i}].loss_fn_inputs",
                    f"loss {self.loss_fn.value} needs {', '.join(missing)}",
                )
        config = resolve_loss_config(
            self.loss_fn, self.loss_fn_config, "ForwardBackwardInput.loss_fn_config"
        )
        object.__setattr__(self, "loss_fn_config", config)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(d.model_input.length for d in self.data)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def tokens(self) -> npt.NDArray[np.int64]:
        """Every datum's input tokens, end to end."""
        return np.concatenate([d.model_input.token_array for d in self.data])

    def has(self, key: str) -> bool:
        """Whether any datum has the loss input ``key``."""
        return any(key in d.loss_fn_inputs for d in self.data)

    def column(self, key: str, fill: float | None = None) -> npt.NDArray[Any]:
        """Loss input ``key`` of every datum, end to end; a datum without it contributes
        ``fill`` for each of its tokens (a KeyError when ``fill`` is None)."""
        dtype = _KNOWN_DTYPES.get(key, np.dtype(np.float32))
        parts = []
        for datum in self.data:
            tensor = datum.loss_fn_inputs.get(key)
            if tensor is None and fill is None:
                raise KeyError(key)
            n = datum.model_input.length
            parts.append(tensor.data if tensor is not None else np.full(n, fill, dtype))
        return np.concatenate(parts)

    def check_vocabulary(self, vocab_size: int) -> None:
        """Refuse any input or target token id the model has no embedding for, naming it."""
        # One bound check per column over the whole batch, read as unsigned so a negative id
        # is a huge one; the culprit is located only when it fails.
        if all(
            not ids.size or ids.view(np.uint64).max() < vocab_size
            for ids in (self.tokens(), self.column("target_tokens"))
        ):
            return
        for i, datum in enumerate(self.data):
            for what, ids in (
                ("model_input", datum.model_input.token_array),
                ("target_tokens", datum.loss_fn_inputs["target_tokens"].data),
            ):
                bad = np.flatnonzero((ids >= vocab_size) | (ids < 0))
                if bad.size:
                    raise ValidationError(
                        f"data[{i}].{what}[{int(bad[0])}]",
                        f"token id {int(ids[bad[0]])} is outside the vocabulary "
                        f"(size {vocab_size})",
                    )


def _metric_keys(
    instance: Any, attribute: attrs.Attribute[Any], value: Mapping[str, float]
) -> None:
    for key in value:
        name, sep, reduction = key.partition(":")
        if not (sep and name and reduction):
            raise ValidationError(
                f"{type(instance).__name__}.{attribute.name}",
                f"metric key {key!r} is not of the form 'name:reduction' (e.g. 'loss:sum')",
            )


def _float_map(value: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()}


def _outputs(value: Iterable[Mapping[str, Any]]) -> tuple[dict[str, TensorData], ...]:
    return tuple(_tensor_map(x) for x in value)


@attrs.frozen
class ForwardBackwardOutput:
    """Per-datum outputs (always ``logprobs`` of the targets) and summed metrics."""

    loss_fn_outputs: tuple[Mapping[str, TensorData], ...] = attrs.field(converter=_outputs)
    metrics: Mapping[str, float] = attrs.field(converter=_float_map, validator=_metric_keys)

    def __attrs_post_init__(self) -> None:
        for i, out in enumerate(self.loss_fn_outputs):
            if "logprobs" not in out:
                raise ValidationError(
                    f"ForwardBackwardOutput.loss_fn_outputs[{i}]", "expected a 'logprobs' tensor"
                )

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, npt.NDArray[Any]],
        lengths: Sequence[int],
        metrics: Mapping[str, float],
    ) -> ForwardBackwardOutput:
        """Outputs computed for the whole request at once (each column every datum's values
        end to end), cut into one mapping per datum."""
        for key, column in columns.items():
            if column.shape != (sum(lengths),):
                raise ValidationError(
                    f"ForwardBackwardOutput.{key}",
                    f"expected shape ({sum(lengths)},) for {len(lengths)} datums, "
                    f"got {column.shape}",
                )
        cuts = list(itertools.accumulate(lengths))[:-1]
        split = {key: np.split(column, cuts) for key, column in columns.items()}
        return cls(
            [{key: parts[i] for key, parts in split.items()} for i in range(len(lengths))],
            metrics,
        )

    @property
    def logprobs(self) -> list[np.ndarray[Any, Any]]:
        return [out["logprobs"].data for out in self.loss_fn_outputs]

    @property
    def loss(self) -> float:
        return self.metrics["loss:sum"]


@attrs.frozen
class AdamParams:
    """AdamW hyperparameters for one ``optim_step`` (Tinker defaults; LR may change per step)."""

    learning_rate: float = attrs.field(default=1e-4, validator=at_least(0.0))
    beta1: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0, high_open=True))
    beta2: float = attrs.field(default=0.95, validator=in_range(0.0, 1.0, high_open=True))
    eps: float = attrs.field(default=1e-12, validator=in_range(0.0, 1.0, low_open=True))
    weight_decay: float = attrs.field(default=0.0, validator=at_least(0.0))
    grad_clip_norm: float = attrs.field(default=0.0, validator=at_least(0.0))  # 0 = off


@attrs.frozen
class OptimStepResult:
    step: int = attrs.field(validator=int_at_least(1))  # optimizer steps taken so far
    learning_rate: float
    grad_norm: float
    update_norm: float
    metrics: Mapping[str, float] = attrs.field(factory=dict, converter=_float_map)


@attrs.frozen
class LoraConfig:
    """LoRA shape; ``rank = 0`` means full fine-tuning (every parameter trains)."""

    rank: int = attrs.field(default=32, validator=int_at_least(0))
    alpha: float = attrs.field(default=32.0, validator=in_range(0.0, 1e6, low_open=True))
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True

    @property
    def is_full_finetune(self) -> bool:
        return self.rank == 0


@attrs.frozen
class SessionConfig:
    """What a training session trains: a base model (hub repo id or directory) and how.

    ``storage_prefix`` is the BlobStore key under which the session saves state and sampler
    weights (``<prefix>/state/<name>``, ``<prefix>/sampler/<name>``).
    """

    base_model: str = attrs.field(validator=non_empty)
    lora: LoraConfig = attrs.field(factory=LoraConfig)
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    storage_prefix: str = "sessions/default"
    # The run this session trains for: stamped on every checkpoint it saves, so a load can
    # tell a checkpoint of this run from one of another.
    run_id: str = attrs.field(default="default", validator=safe_name)
    # Datums per forward/backward pass: a request of more runs as several passes whose
    # gradients add up before the optimizer step (less memory, the same update). 0: one pass.
    micro_batch_size: int = attrs.field(default=0, validator=int_at_least(0))


CheckpointKind = Literal["state", "sampler"]


@attrs.frozen
class CheckpointRef:
    """A saved training state (weights + optimizer) or sampler weights, by BlobStore key.

    ``run_id``, ``name`` and ``step`` say which checkpoint this is; its manifest records the
    same, and a load refuses a checkpoint whose manifest says otherwise (one copied over
    another, or an index line pointing into another run)."""

    kind: CheckpointKind = attrs.field(validator=one_of(("state", "sampler")))
    name: str = attrs.field(validator=safe_name)
    key: str = attrs.field(validator=non_empty)
    run_id: str = attrs.field(validator=safe_name)
    step: int = attrs.field(default=0, validator=int_at_least(0))
    base_model: str = ""

    @property
    def uri(self) -> str:
        return f"galley://{self.key}"


@attrs.frozen
class ModelInfo:
    name: str
    vocab_size: int = attrs.field(validator=int_at_least(1))
    max_context: int = attrs.field(validator=int_at_least(1))
    lora_rank: int = attrs.field(default=0, validator=int_at_least(0))
    num_parameters: int = attrs.field(default=0, validator=int_at_least(0))
    num_trainable_parameters: int = attrs.field(default=0, validator=int_at_least(0))


@attrs.frozen
class ModelRef:
    """What a Completer samples from: a base model plus optional exported sampler weights."""

    base_model: str = attrs.field(validator=non_empty)
    adapter: CheckpointRef | None = None

    def __attrs_post_init__(self) -> None:
        if self.adapter is not None and self.adapter.kind != "sampler":
            raise ValidationError(
                "ModelRef.adapter",
                f"expected sampler weights, got a {self.adapter.kind} checkpoint",
            )


def _str_tuple(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _stop_strings(instance: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for i, s in enumerate(value):
        if not isinstance(s, str) or not s:
            raise ValidationError(
                f"SamplingParams.stop[{i}]", f"expected a non-empty string, got {s!r}"
            )


def _stop_ids(instance: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValidationError(
                f"SamplingParams.stop_token_ids[{i}]", f"expected a token id, got {t!r}"
            )


def _top_k(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        raise ValidationError("SamplingParams.top_k", f"expected -1 (off) or >= 1, got {value!r}")


@attrs.frozen
class SamplingParams:
    """How to sample. temperature 0 is greedy; ``stop`` strings and ``stop_token_ids`` end a
    sequence (EOS always does unless ``ignore_eos``); ``seed`` makes sampling reproducible."""

    max_tokens: int = attrs.field(default=64, validator=int_at_least(0))
    temperature: float = attrs.field(default=1.0, validator=at_least(0.0))
    top_k: int = attrs.field(default=-1, validator=_top_k)
    top_p: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0, low_open=True))
    stop: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_stop_strings)
    stop_token_ids: tuple[int, ...] = attrs.field(
        default=(), converter=int_tuple, validator=_stop_ids
    )
    seed: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(0))
    )
    ignore_eos: bool = False
    include_prompt_logprobs: bool = False


StopReason = Literal["stop", "length"]


@attrs.frozen
class SampledSequence:
    tokens: tuple[int, ...] = attrs.field(converter=int_tuple)
    logprobs: tuple[float, ...] = attrs.field(converter=float_tuple)
    stop_reason: StopReason = attrs.field(validator=one_of(("stop", "length")))
    text: str = ""

    def __attrs_post_init__(self) -> None:
        if len(self.logprobs) != len(self.tokens):
            raise ValidationError(
                "SampledSequence.logprobs",
                f"{len(self.logprobs)} logprobs for {len(self.tokens)} tokens; "
                "expected one per token",
            )


def _sequences(value: Iterable[SampledSequence]) -> tuple[SampledSequence, ...]:
    return tuple(value)


@attrs.frozen
class Completion:
    """The samples for one prompt; ``prompt_logprobs[0]`` is None (nothing precedes token 0)."""

    prompt_tokens: tuple[int, ...] = attrs.field(converter=int_tuple)
    sequences: tuple[SampledSequence, ...] = attrs.field(converter=_sequences)
    prompt_logprobs: tuple[float | None, ...] | None = None

    @property
    def text(self) -> str:
        return self.sequences[0].text if self.sequences else ""
