"""The Tinker wire format, read into galley's types and written back from them.

``forward_backward`` arrives as the ``tinker`` package's ``ForwardBackwardRequest`` protobuf;
its results and sampling results go back as ``ForwardBackwardOutput`` and ``SampleResponse``
protobufs (what the SDK requires); everything else is JSON in the shapes of the SDK's own
pydantic types. Anything galley does not do (image or audio chunks, sparse tensors, top-k
logprobs) is refused here, naming the feature, before any work starts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from tinker import types as tt
from tinker.proto import tinker_public_pb2 as pb

from galley.adapters.serve.errors import bad_request, unsupported
from galley.core.domain.losses import LOSS_NAMES
from galley.core.domain.model_input import ModelInput
from galley.core.domain.tensors import TensorData
from galley.core.domain.types import (
    AdamParams,
    Completion,
    Datum,
    ForwardBackwardOutput,
    SamplingParams,
)
from galley.core.errors import GalleyError

_TENSOR_DTYPES: Mapping[int, npt.DTypeLike] = {
    pb.DTYPE_FLOAT32: np.float32,
    pb.DTYPE_INT64: np.int64,
}
MAX_NUM_SAMPLES = 256


@attrs.frozen
class ForwardBackwardCall:
    model_id: str
    seq_id: int | None
    forward_only: bool
    loss_fn: str
    loss_fn_config: Mapping[str, float]
    data: tuple[Datum, ...]


def _array(raw: bytes, dtype: npt.DTypeLike, where: str) -> npt.NDArray[Any]:
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise bad_request(f"{where}: {len(raw)} bytes is not a whole number of {size}-byte values")
    return np.frombuffer(raw, dtype=dtype)


def _tensor(msg: pb.Tensor, where: str) -> TensorData:
    if msg.WhichOneof("encoding") == "sparse_csr":
        raise unsupported(f"sparse tensors ({where})")
    dtype = _TENSOR_DTYPES.get(msg.dtype)
    if dtype is None:
        raise bad_request(f"{where}: dtype {msg.dtype} is not float32 or int64")
    values = _array(msg.dense, dtype, where)
    shape = tuple(msg.shape) or (len(values),)
    if math.prod(shape) != len(values):
        raise bad_request(f"{where}: shape {list(shape)} does not hold {len(values)} values")
    return TensorData(values.reshape(shape))


def _tokens(chunks: Sequence[pb.Chunk], where: str) -> list[int]:
    tokens: list[int] = []
    for j, chunk in enumerate(chunks):
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            what = {"image": "image chunks", "dmel": "audio (dmel) chunks"}.get(str(kind))
            if what is None:
                raise bad_request(f"{where}.model_input[{j}] is an empty chunk")
            raise unsupported(f"{what} ({where}.model_input[{j}]): send text tokens")
        ids = _array(chunk.encoded_text.tokens, np.int32, f"{where}.model_input[{j}]")
        if len(ids) and int(ids.min()) < 0:
            raise bad_request(f"{where}.model_input[{j}]: token ids must be >= 0")
        tokens.extend(ids.tolist())
    return tokens


def _loss_config(msg: pb.ForwardBackwardRequest) -> dict[str, float]:
    config = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():  # preferred where both are set
        if value.WhichOneof("value") != "number":
            raise unsupported(f"text loss_fn_config values ({key!r})")
        config[key] = value.number
    return config


def read_forward_backward(body: bytes) -> ForwardBackwardCall:
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError) as e:
        raise bad_request(f"the body is not a ForwardBackwardRequest protobuf: {e}") from None
    if msg.loss_fn not in LOSS_NAMES:
        raise unsupported(f"loss_fn {msg.loss_fn!r} (galley's losses: {', '.join(LOSS_NAMES)})")
    data = []
    for i, d in enumerate(msg.data):
        where = f"data[{i}]"
        try:
            inputs = {
                name: _tensor(t, f"{where}.loss_fn_inputs[{name!r}]")
                for name, t in d.loss_fn_inputs.items()
            }
            data.append(Datum(ModelInput.from_ints(_tokens(d.model_input, where)), inputs))
        except GalleyError as e:
            raise bad_request(f"{where}: {e}") from None
    if not data:
        raise bad_request("data is empty; expected at least one datum")
    seq_id = msg.seq_id if msg.seq_id else None
    return ForwardBackwardCall(
        msg.model_id, seq_id, msg.forward_only, msg.loss_fn, _loss_config(msg), tuple(data)
    )


def _batched(arrays: Sequence[npt.NDArray[Any]]) -> pb.BatchedTensor:
    floating = np.issubdtype(arrays[0].dtype, np.floating)
    dtype = np.float32 if floating else np.int64
    parts = [np.ascontiguousarray(a, dtype=dtype).tobytes() for a in arrays]
    offsets = np.cumsum([0, *(len(p) for p in parts)], dtype=np.int64)
    return pb.BatchedTensor(
        data=b"".join(parts),
        offsets=offsets.tobytes(),
        dtype=pb.DTYPE_FLOAT32 if floating else pb.DTYPE_INT64,
        trailing_shape=list(arrays[0].shape[1:]),
    )


def forward_backward_output(out: ForwardBackwardOutput) -> bytes:
    """One ArrayRecord for all datums when their outputs agree in trailing shape, else one
    per datum (the SDK merges either)."""
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", metrics=dict(out.metrics))
    outputs = [{k: v.to_numpy() for k, v in o.items()} for o in out.loss_fn_outputs]
    if outputs:
        names = sorted(outputs[0])
        uniform = all(
            sorted(o) == names
            and all(o[n].shape[1:] == outputs[0][n].shape[1:] and o[n].ndim for n in names)
            for o in outputs
        )
        groups = [outputs] if uniform else [[o] for o in outputs]
        for group in groups:
            fields = {n: _batched([o[n] for o in group]) for n in sorted(group[0])}
            msg.loss_fn_outputs.append(
                pb.ArrayRecord(type_tag="ArrayRecord", fields=fields, num_datums=len(group))
            )
    return bytes(msg.SerializeToString())


def adam_params(request: tt.OptimStepRequest) -> AdamParams:
    p = request.optim_params
    if not isinstance(p, tt.AdamParams):
        raise unsupported(f"optimizer {getattr(p, 'type', '?')!r} (AdamW only)")
    try:
        return AdamParams(
            p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm
        )
    except GalleyError as e:
        raise bad_request(f"adam_params: {e}") from None


def prompt_tokens(prompt: tt.ModelInput) -> ModelInput:
    tokens: list[int] = []
    for j, chunk in enumerate(prompt.chunks):
        if not isinstance(chunk, tt.EncodedTextChunk):
            raise unsupported(f"{chunk.type} chunks (prompt.chunks[{j}]): send text tokens")
        tokens.extend(int(t) for t in chunk.tokens)
    if not tokens or min(tokens) < 0:
        raise bad_request("prompt: expected at least one token id, each >= 0")
    return ModelInput.from_ints(tokens)


def sampling_params(request: tt.SampleRequest) -> SamplingParams:
    """Tinker's ``stop``: None stops at EOS; strings or token ids stop there too (as Tinker's
    samplers do, EOS still stops); ``[]`` turns every stop off, EOS included."""
    for field, given in (
        ("topk_prompt_logprobs", request.topk_prompt_logprobs),
        ("topk_sample_logprobs", request.topk_sample_logprobs),
        ("prompt_alt_tokens_k", request.prompt_alt_tokens_k),
        ("target_prompt_logprobs", request.target_prompt_logprobs is not None),
        ("record_stability_info", bool(request.record_stability_info)),
    ):
        if given:
            raise unsupported(field)
    if not 1 <= request.num_samples <= MAX_NUM_SAMPLES:
        raise bad_request(
            f"num_samples: expected 1 to {MAX_NUM_SAMPLES}, got {request.num_samples}"
        )
    p = request.sampling_params
    stop = p.stop
    words: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    if isinstance(stop, str):
        words = (stop,)
    elif stop is not None:
        items: list[str | int] = list(stop)
        words = tuple(s for s in items if isinstance(s, str))
        ids = tuple(int(s) for s in items if not isinstance(s, str))
    try:
        return SamplingParams(
            max_tokens=p.max_tokens if p.max_tokens is not None else 64,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            stop=words,
            stop_token_ids=ids,
            seed=p.seed,
            ignore_eos=stop is not None and not isinstance(stop, str) and not list(stop),
            include_prompt_logprobs=bool(request.prompt_logprobs),
        )
    except GalleyError as e:
        raise bad_request(f"sampling_params: {e}") from None


def sample_response(completion: Completion, prompt_logprobs_last_n: int | None) -> bytes:
    msg = pb.SampleResponse()
    for seq in completion.sequences:
        msg.sequences.append(
            pb.SampledSequence(
                stop_reason=pb.STOP_REASON_STOP
                if seq.stop_reason == "stop"
                else pb.STOP_REASON_LENGTH,
                tokens=np.asarray(seq.tokens, np.int32).tobytes(),
                logprobs=np.asarray(seq.logprobs, np.float32).tobytes(),
            )
        )
    if completion.prompt_logprobs is not None:
        values = np.array(
            [math.nan if v is None else v for v in completion.prompt_logprobs], np.float32
        )
        if prompt_logprobs_last_n is not None:
            values[: len(values) - prompt_logprobs_last_n] = math.nan
        msg.prompt_logprobs = values.tobytes()
    return bytes(msg.SerializeToString())
