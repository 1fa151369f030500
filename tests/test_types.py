"""Construction-time validation of the domain types: the error names the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from galley.core import (
    AdamParams,
    CheckpointRef,
    Conversation,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    LoraConfig,
    Message,
    ModelInput,
    ModelRef,
    SampledSequence,
    SamplingParams,
    SessionConfig,
    TensorData,
    ValidationError,
)

BAD = [
    (lambda: SamplingParams(max_tokens=-1), "SamplingParams.max_tokens"),
    (lambda: SamplingParams(temperature=-0.5), "SamplingParams.temperature"),
    (lambda: SamplingParams(top_p=0.0), "SamplingParams.top_p"),
    (lambda: SamplingParams(top_p=1.5), "SamplingParams.top_p"),
    (lambda: SamplingParams(top_k=0), "SamplingParams.top_k"),
    (lambda: SamplingParams(stop=("",)), r"SamplingParams.stop\[0\]"),
    (lambda: SamplingParams(stop_token_ids=(-3,)), r"SamplingParams.stop_token_ids\[0\]"),
    (lambda: SamplingParams(seed=-1), "SamplingParams.seed"),
    (lambda: AdamParams(learning_rate=-1e-4), "AdamParams.learning_rate"),
    (lambda: AdamParams(beta1=1.0), "AdamParams.beta1"),
    (lambda: AdamParams(eps=0.0), "AdamParams.eps"),
    (lambda: AdamParams(grad_clip_norm=float("nan")), "AdamParams.grad_clip_norm"),
    (lambda: AdamParams(learning_rate="fast"), "AdamParams.learning_rate"),  # type: ignore[arg-type]
    (lambda: LoraConfig(rank=-4), "LoraConfig.rank"),
    (lambda: LoraConfig(rank=2.5), "LoraConfig.rank"),  # type: ignore[arg-type]
    (lambda: SessionConfig(base_model=""), "base_model"),
    (lambda: CheckpointRef("weights", "x", "k", "r"), "CheckpointRef.kind"),  # type: ignore[arg-type]
    (lambda: CheckpointRef("state", "../x", "k", "r"), "CheckpointRef.name"),
    (lambda: CheckpointRef("state", "x", "k", "a/b"), "CheckpointRef.run_id"),
    (lambda: ModelRef("m", CheckpointRef("state", "x", "k", "r")), "ModelRef.adapter"),
    (lambda: SampledSequence([1, 2], [-0.1], "stop"), "SampledSequence.logprobs"),
    (lambda: SampledSequence([1], [-0.1], "eos"), "SampledSequence.stop_reason"),
    (lambda: Message("robot", "hi"), "Message.role"),
    (lambda: Message("user", 3), "Message.content"),  # type: ignore[arg-type]
    (lambda: Conversation([]), "Conversation.messages"),
    (lambda: ModelInput.from_ints([1, -2]), r"tokens\[1\]"),
    (lambda: TensorData(np.zeros(3, dtype=np.float64)), "TensorData.data"),
    (lambda: TensorData([1, 2]), "TensorData.data"),  # type: ignore[arg-type]
    (lambda: ForwardBackwardOutput([{}], {}), "logprobs"),
    (lambda: ForwardBackwardOutput([], {"loss": 1.0}), "name:reduction"),
    (lambda: ForwardBackwardInput([]), "ForwardBackwardInput.data"),
]


@pytest.mark.parametrize(("make", "field"), BAD)
def test_bad_values_raise_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        make()


def datum(n: int = 4, **inputs: Any) -> Datum:
    base = {"target_tokens": np.arange(n, dtype=np.int64)}
    return Datum(ModelInput.from_ints(list(range(n))), {**base, **inputs})


def test_datum_length_mismatch_names_the_input() -> None:
    with pytest.raises(ValidationError, match=r"loss_fn_inputs\['weights'\].*length 4"):
        datum(weights=np.ones(3, dtype=np.float32))
    with pytest.raises(ValidationError, match=r"loss_fn_inputs\['target_tokens'\]"):
        Datum(ModelInput.from_ints([1, 2]), {"target_tokens": np.arange(3)})


def test_datum_dtype_mismatch_is_refused() -> None:
    with pytest.raises(ValidationError, match="expected dtype int64"):
        Datum(
            ModelInput.from_ints([1]), {"target_tokens": TensorData(np.ones(1, dtype=np.float32))}
        )


def test_loss_names_and_required_inputs() -> None:
    d = datum()
    with pytest.raises(ValidationError, match="unknown loss 'mse'; expected one of cross_entropy"):
        ForwardBackwardInput([d], "mse")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"data\[0\].*ppo needs logprobs, advantages"):
        ForwardBackwardInput([d], "ppo")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="clip_low"):
        ForwardBackwardInput([d], "cross_entropy", {"clip_low_threshold": 0.5})  # type: ignore[arg-type]
    ppo = datum(logprobs=np.zeros(4, dtype=np.float32), advantages=np.ones(4, dtype=np.float32))
    request = ForwardBackwardInput([ppo], "ppo")  # type: ignore[arg-type]
    assert request.loss_fn_config == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


def test_adam_defaults_follow_tinker() -> None:
    p = AdamParams()
    assert (p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm) == (
        1e-4,
        0.9,
        0.95,
        1e-12,
        0.0,
        0.0,
    )


@given(st.lists(st.lists(st.integers(0, 10**6), min_size=1, max_size=10), max_size=5))
def test_model_input_chunks_concatenate(chunks: list[list[int]]) -> None:
    mi = ModelInput.empty()
    for c in chunks:
        mi = mi.append_ints(c)
    flat = [t for c in chunks for t in c]
    assert mi.to_ints() == flat and mi.length == len(flat)
    assert ModelInput.from_ints(flat).to_ints() == flat


def test_tensor_data_is_an_immutable_copy() -> None:
    source = np.arange(3, dtype=np.int64)
    t = TensorData(source)
    source[0] = 99
    assert t.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="read-only"):
        t.data[0] = 5
    assert TensorData.from_numpy([1.5, 2]).dtype == "float32"
    assert TensorData.from_numpy(np.arange(2, dtype=np.int32)).dtype == "int64"


def test_datum_from_tokens_shifts_targets() -> None:
    d = Datum.from_tokens([10, 11, 12], [0.0, 0.0, 1.0])
    assert d.model_input.to_ints() == [10, 11]
    assert d.loss_fn_inputs["target_tokens"].tolist() == [11, 12]
    assert d.loss_fn_inputs["weights"].tolist() == [0.0, 1.0]
    assert d.num_loss_tokens == 1.0
