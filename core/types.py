"""Training and sampling types (the Tinker API's semantics).

All are frozen attrs classes that validate on construction, so a malformed request fails where
it is built, naming the field, instead of deep inside an adapter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

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
from galley.core.errors import ValidationError
from galley.core.losses import REQUIRED_INPUTS, LossFn, parse_loss_fn, resolve_loss_config
from galley.core.model_input import ModelInput
from galley.core.tensors import TensorData

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

    def with_inputs(self, replaced: Mapping[str, npt.NDArray[Any]]) -> Datum:
        """This datum with some of its loss inputs replaced by arrays the caller has just
        computed and keeps no handle to (the right dtype, one entry per token). Only the new
        arrays are checked, and they are not copied: the trainer reweights every datum of
        every step."""
        for key, array in replaced.items():
            _check_known_column(f"Datum.with_inputs[{key!r}]", key, array, self.model_input.length)
        inputs = {**self.loss_fn_inputs}
        for key, array in replaced.items():
            inputs[key] = TensorData.adopt(array)
        datum: Datum = object.__new__(Datum)
        object.__setattr__(datum, "model_input", self.model_input)  # validated with self
        object.__setattr__(datum, "loss_fn_inputs", inputs)
        return datum

    @property
    def num_loss_tokens(self) -> float:
        """Sum of weights (the number of trained tokens for 0/1 weights)."""
        weights = self.loss_fn_inputs.get("weights")
        return float(weights.data.sum()) if weights is not None else float(self.model_input.length)


T = TypeVar("T")


class _Columnar(Sequence[T]):
    """A sequence whose items are views cut from arrays laid end to end: ``_starts[i]`` to
    ``_starts[i + 1]`` is item i's span. Equal to any sequence with equal items."""

    __slots__ = ("_starts",)
    _starts: list[int]

    def _item(self, i: int) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._starts) - 1

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        return self._item(range(len(self))[index])

    def __iter__(self) -> Iterator[T]:
        return (self._item(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # equal to lists and tuples of its items

    @property
    def num_tokens(self) -> int:
        return self._starts[-1]

    def bounds(self, i: int) -> tuple[int, int]:
        """Where item ``i`` sits in the columns."""
        return self._starts[i], self._starts[i + 1]

    @property
    def offsets(self) -> list[int]:
        """Where each item starts in the columns."""
        return self._starts[:-1]


class DatumBatch(_Columnar[Datum]):
    """One request's datums with their per-token arrays also laid end to end.

    An adapter that works on whole batches (the noop model, the JAX padder) reads ``tokens``,
    ``lengths`` and ``column(key)``, one array each, instead of one per datum; the trainer
    replaces a column (the normalised weights) without building a ``Datum`` per row. It is the
    ``Sequence[Datum]`` the port takes: indexing builds the datum, with replaced columns sliced
    in. ``replaced`` columns are handed over: made read-only, not copied. ``DatumBatch.of``
    wraps any sequence of datums (a batch is returned as is)."""

    __slots__ = ("_columns", "_replaced", "_tokens", "datums", "lengths")

    def __init__(
        self, datums: Sequence[Datum], replaced: Mapping[str, npt.NDArray[Any]] | None = None
    ) -> None:
        self.datums: tuple[Datum, ...] = tuple(datums)
        self.lengths: tuple[int, ...] = tuple(d.model_input.length for d in self.datums)
        self._starts = [0, *itertools.accumulate(self.lengths)]
        self._replaced: dict[str, npt.NDArray[Any]] = {}
        self._columns: dict[str, npt.NDArray[Any]] = {}
        self._tokens: npt.NDArray[np.int64] | None = None
        for key, column in (replaced or {}).items():
            field = f"DatumBatch.replaced[{key!r}]"
            _check_known_column(field, key, column, self.num_tokens)
            if not all(key in d.loss_fn_inputs for d in self.datums):
                raise ValidationError(field, "replaces an input some datum does not have")
            column.flags.writeable = False
            self._replaced[key] = column

    @classmethod
    def of(cls, data: Iterable[Datum]) -> DatumBatch:
        return data if isinstance(data, DatumBatch) else cls(tuple(data))

    def _item(self, i: int) -> Datum:
        datum = self.datums[i]
        if not self._replaced:
            return datum
        start, end = self._starts[i], self._starts[i + 1]
        return datum.with_inputs({k: c[start:end] for k, c in self._replaced.items()})

    @property
    def tokens(self) -> npt.NDArray[np.int64]:
        """Every datum's input tokens, end to end (read-only)."""
        if self._tokens is None:
            arrays = [d.model_input.token_array for d in self.datums]
            self._tokens = _read_only(np.concatenate(arrays) if arrays else np.zeros(0, np.int64))
        return self._tokens

    def has(self, key: str) -> bool:
        """Whether any datum has the loss input ``key``."""
        return key in self._replaced or any(key in d.loss_fn_inputs for d in self.datums)

    def column(self, key: str, fill: float | None = None) -> npt.NDArray[Any]:
        """Loss input ``key`` of every datum, end to end (read-only); a datum without it
        contributes ``fill`` for each of its tokens (a KeyError when ``fill`` is None)."""
        if key in self._replaced:
            return self._replaced[key]
        if key not in self._columns:
            dtype = _KNOWN_DTYPES.get(key, np.float32)
            parts = []
            for d, n in zip(self.datums, self.lengths, strict=True):
                tensor = d.loss_fn_inputs.get(key)
                if tensor is None and fill is None:
                    raise KeyError(key)
                parts.append(tensor.data if tensor is not None else np.full(n, fill, dtype))
            column = np.concatenate(parts) if parts else np.zeros(0, dtype)
            self._columns[key] = _read_only(column)
        return self._columns[key]


def _check_known_column(field: str, key: str, array: npt.NDArray[Any], n: int) -> None:
    """``array`` can stand for loss input ``key`` over ``n`` tokens: a known key, its dtype."""
    expected = _KNOWN_DTYPES.get(key)
    if expected is None or array.dtype != expected or array.shape != (n,):
        raise ValidationError(
            field,
            f"expected a known input of dtype {expected} and shape ({n},), got "
            f"{array.dtype} {array.shape}",
        )


def _read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.flags.writeable = False
    return array


_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.int64))


class DatumOutputs(_Columnar[Mapping[str, TensorData]]):
    """Per-datum outputs kept as columns (one array per key, every datum's values end to end)
    and cut per datum only when read: a trainer reads each step's summed metrics, and a
    datum's per-token logprobs only when it asks for them."""

    __slots__ = ("_columns",)

    def __init__(self, columns: Mapping[str, npt.NDArray[Any]], lengths: Sequence[int]) -> None:
        self._starts = [0, *itertools.accumulate(lengths)]
        self._columns: dict[str, npt.NDArray[Any]] = {}
        for key, column in columns.items():
            if column.shape != (self.num_tokens,):
                raise ValidationError(
                    f"DatumOutputs[{key!r}]",
                    f"expected shape ({self.num_tokens},) for {len(self)} datums, "
                    f"got {column.shape}",
                )
            if column.dtype not in _OUTPUT_DTYPES:
                raise ValidationError(
                    f"DatumOutputs[{key!r}]", f"expected float32 or int64, got {column.dtype}"
                )
            self._columns[key] = _read_only(column)

    @property
    def column_names(self) -> frozenset[str]:
        """The keys every datum's output has."""
        return frozenset(self._columns)

    def _item(self, i: int) -> Mapping[str, TensorData]:
        start, end = self._starts[i], self._starts[i + 1]
        return {key: TensorData.adopt(column[start:end]) for key, column in self._columns.items()}


def _loss_fn(value: Any) -> LossFn:
    return parse_loss_fn(value, "ForwardBackwardInput.loss_fn")


def _as_batch(value: Iterable[Datum]) -> DatumBatch:
    return DatumBatch.of(value)


@attrs.frozen
class ForwardBackwardInput:
    """A validated ``forward``/``forward_backward`` request: data, loss and its config."""

    data: DatumBatch = attrs.field(converter=_as_batch)
    loss_fn: LossFn = attrs.field(default=LossFn.CROSS_ENTROPY, converter=_loss_fn)
    loss_fn_config: Mapping[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.data:
            raise ValidationError("ForwardBackwardInput.data", "expected at least one Datum")
        required = REQUIRED_INPUTS[self.loss_fn]
        needed = set(required)
        # A batch's replaced columns replace inputs its datums have: its datums have its keys.
        for i, datum in enumerate(self.data.datums):
            if needed <= datum.loss_fn_inputs.keys():  # one C-level check per datum
                continue
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
    def num_tokens(self) -> int:
        return self.data.num_tokens

    def check_vocabulary(self, vocab_size: int) -> None:
        """Refuse any input or target token id the model has no embedding for, naming it."""
        # One bound check per column over the whole batch, read as unsigned so a negative id
        # is a huge one; the culprit is located only when it fails.
        batch = self.data
        if all(
            not ids.size or ids.view(np.uint64).max() < vocab_size
            for ids in (batch.tokens, batch.column("target_tokens"))
        ):
            return
        for i, datum in enumerate(batch):
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


def _outputs(value: Iterable[Mapping[str, Any]]) -> Sequence[Mapping[str, TensorData]]:
    return value if isinstance(value, DatumOutputs) else tuple(_tensor_map(x) for x in value)


@attrs.frozen
class ForwardBackwardOutput:
    """Per-datum outputs (always ``logprobs`` of the targets) and summed metrics."""

    # A DatumOutputs (columns, cut per datum when read) is kept as is.
    loss_fn_outputs: Sequence[Mapping[str, TensorData]] = attrs.field(converter=_outputs)
    metrics: Mapping[str, float] = attrs.field(converter=_float_map, validator=_metric_keys)

    def __attrs_post_init__(self) -> None:
        outputs = self.loss_fn_outputs
        if isinstance(outputs, DatumOutputs):
            if "logprobs" not in outputs.column_names and len(outputs):
                raise ValidationError(
                    "ForwardBackwardOutput.loss_fn_outputs", "expected a 'logprobs' column"
                )
            return
        for i, out in enumerate(outputs):
            if "logprobs" not in out:
                raise ValidationError(
                    f"ForwardBackwardOutput.loss_fn_outputs[{i}]", "expected a 'logprobs' tensor"
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
