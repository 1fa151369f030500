"""Hypothesis strategies for galley's public types."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from galley.core import (
    AdamParams,
    CheckpointRef,
    Completion,
    Conversation,
    Datum,
    ForwardBackwardOutput,
    LoraConfig,
    Message,
    ModelInfo,
    ModelInput,
    ModelRef,
    OptimStepResult,
    SampledSequence,
    SamplingParams,
    SessionConfig,
    TensorData,
)
from galley.core.domain.batching import DataPosition
from galley.core.domain.chat import ROLES
from galley.core.domain.model_input import EncodedTextChunk
from galley.core.runs.records import CheckpointRecord, MetricRecord
from galley.core.runs.run_record import ConfigChange, FieldChange, RunRecord

token = st.integers(0, 200_000)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
unit = st.floats(0, 1, exclude_max=True)
name = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,15}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)
text = st.text(max_size=40)

model_inputs = st.lists(st.lists(token, min_size=1, max_size=8), max_size=3).map(
    lambda chunks: ModelInput(tuple(EncodedTextChunk(c) for c in chunks))
)

tensors = st.one_of(
    hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
        elements=st.floats(width=32),
    ),
).map(TensorData)


@st.composite
def datums(draw: st.DrawFn) -> Datum:
    mi = draw(model_inputs)
    n = mi.length
    inputs = {
        "target_tokens": TensorData(
            np.asarray(draw(st.lists(token, min_size=n, max_size=n)), dtype=np.int64)
        )
    }
    for key in draw(st.sets(st.sampled_from(["weights", "advantages", "logprobs"]))):
        inputs[key] = TensorData(
            np.asarray(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float32)
        )
    return Datum(mi, inputs)


checkpoint_refs = st.builds(
    CheckpointRef,
    kind=st.sampled_from(["state", "sampler"]),
    name=name,
    key=name,
    run_id=name,
    step=st.integers(0, 10**6),
    base_model=text,
)
sampling_params = st.builds(
    SamplingParams,
    max_tokens=st.integers(0, 4096),
    temperature=st.floats(0, 5),
    top_k=st.one_of(st.just(-1), st.integers(1, 1000)),
    top_p=st.floats(0, 1, exclude_min=True),
    stop=st.lists(st.text(min_size=1, max_size=5), max_size=3).map(tuple),
    stop_token_ids=st.lists(token, max_size=3).map(tuple),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
    ignore_eos=st.booleans(),
    include_prompt_logprobs=st.booleans(),
)


@st.composite
def sampled_sequences(draw: st.DrawFn) -> SampledSequence:
    tokens = draw(st.lists(token, max_size=6))
    logprobs = draw(st.lists(st.floats(-50, 0), min_size=len(tokens), max_size=len(tokens)))
    return SampledSequence(tokens, logprobs, draw(st.sampled_from(["stop", "length"])), draw(text))


@st.composite
def forward_outputs(draw: st.DrawFn) -> ForwardBackwardOutput:
    n = draw(st.integers(1, 3))
    outs = [
        {"logprobs": TensorData(np.asarray(draw(st.lists(finite, max_size=5)), dtype=np.float32))}
        for _ in range(n)
    ]
    metrics = draw(st.dictionaries(st.sampled_from(["loss:sum", "tokens:sum", "kl:mean"]), finite))
    return ForwardBackwardOutput(outs, metrics)


conversations = st.lists(
    st.builds(Message, st.sampled_from(ROLES), text), min_size=1, max_size=5
).map(Conversation)

PUBLIC_TYPES = {
    ModelInput: model_inputs,
    TensorData: tensors,
    Datum: datums(),
    ForwardBackwardOutput: forward_outputs(),
    AdamParams: st.builds(
        AdamParams,
        learning_rate=st.floats(0, 1),
        beta1=unit,
        beta2=unit,
        eps=st.floats(1e-15, 1e-3),
        weight_decay=st.floats(0, 1),
        grad_clip_norm=st.floats(0, 10),
    ),
    OptimStepResult: st.builds(
        OptimStepResult,
        step=st.integers(1, 10**6),
        learning_rate=finite,
        grad_norm=finite,
        update_norm=finite,
    ),
    LoraConfig: st.builds(
        LoraConfig, rank=st.integers(0, 512), alpha=st.floats(0.5, 512), seed=st.integers(0, 2**31)
    ),
    SessionConfig: st.builds(
        SessionConfig,
        base_model=name,
        seed=st.integers(0, 2**31),
        storage_prefix=name,
        run_id=name,
    ),
    SamplingParams: sampling_params,
    SampledSequence: sampled_sequences(),
    Completion: st.builds(
        Completion,
        prompt_tokens=st.lists(token, max_size=5).map(tuple),
        sequences=st.lists(sampled_sequences(), max_size=2).map(tuple),
    ),
    CheckpointRef: checkpoint_refs,
    ModelInfo: st.builds(
        ModelInfo, name=text, vocab_size=st.integers(1, 10**6), max_context=st.integers(1, 10**6)
    ),
    ModelRef: st.builds(
        ModelRef,
        base_model=name,
        adapter=st.one_of(st.none(), checkpoint_refs.filter(lambda r: r.kind == "sampler")),
    ),
    Message: st.builds(Message, st.sampled_from(ROLES), text),
    Conversation: conversations,
    RunRecord: st.builds(
        RunRecord,
        workflow=name,
        run_id=name,
        config_version=st.integers(1, 9),
        config=st.dictionaries(name, st.one_of(st.none(), st.booleans(), finite, text)),
        created=finite,
        history=st.lists(
            st.builds(
                ConfigChange,
                time=finite,
                changes=st.dictionaries(
                    name, st.builds(FieldChange, st.one_of(finite, text), st.one_of(finite, text))
                ),
                accepted=st.lists(name, max_size=3).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
    ),
    MetricRecord: st.builds(
        MetricRecord,
        run_id=name,
        stream=name,
        step=st.integers(0, 10**6),
        metrics=st.dictionaries(name, finite),
    ),
    CheckpointRecord: st.builds(
        CheckpointRecord,
        name=name,
        step=st.integers(0, 10**6),
        state=checkpoint_refs,
        next_position=st.builds(
            DataPosition, st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)
        ),
    ),
}
