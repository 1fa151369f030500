"""Every public type survives a JSON round trip, and bad documents are refused clearly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.core import (
    AdamParams,
    Datum,
    ModelInput,
    SamplingParams,
    TensorData,
    ValidationError,
    from_data,
    from_json,
    to_data,
    to_json,
)
from tests.strategies import PUBLIC_TYPES


@pytest.mark.parametrize("cls", list(PUBLIC_TYPES), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_json_round_trip(cls: type[Any], data: st.DataObject) -> None:
    value = data.draw(PUBLIC_TYPES[cls])
    text = to_json(value)
    json.loads(text)  # plain JSON, no custom encoder needed
    assert from_json(cls, text) == value


def test_tensor_json_keeps_nan_and_inf() -> None:
    import numpy as np

    t = TensorData(np.asarray([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32))
    assert from_json(TensorData, to_json(t)) == t


def test_model_input_document_is_readable() -> None:
    assert to_data(ModelInput.from_ints([1, 2])) == {"chunks": [{"tokens": [1, 2]}]}


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        from_data(AdamParams, {"learning_rat": 0.1})


def test_invalid_values_are_refused_on_load() -> None:
    with pytest.raises(ValidationError, match="max_tokens"):
        from_data(SamplingParams, {"max_tokens": -1})


def test_datum_with_inconsistent_lengths_is_refused_on_load() -> None:
    doc = to_data(Datum.from_tokens([1, 2, 3], [0, 1, 1]))
    doc["loss_fn_inputs"]["weights"] = {"dtype": "float32", "shape": [1], "data": [1.0]}
    with pytest.raises(ValidationError, match="weights"):
        from_data(Datum, doc)
