"""JSON-safe (de)serialisation of every public type, through one cattrs converter.

``to_data(obj)`` gives plain dicts/lists/str/float/int/bool/None that ``json.dumps`` accepts;
``from_data(cls, data)`` rebuilds (and re-validates) the object. Unknown keys are refused, so a
typo in a stored or hand-written document is an error, not a silently ignored field, and values
are read strictly: a string is not a bool (``"false"`` would be true), a float or a bool is not
an integer, a list is not a string. Only an integer may stand for a float.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import cattrs
import numpy as np
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception

from galley.core.domain.model_input import EncodedTextChunk
from galley.core.domain.tensors import DTYPES, TensorData
from galley.core.domain.weights_source import WeightsSource
from galley.core.errors import GalleyError, ValidationError

T = TypeVar("T")

converter = make_converter(forbid_extra_keys=True)


def _unstructure_tensor(t: TensorData) -> dict[str, Any]:
    data = t.data.reshape(-1).tolist()
    if t.dtype == "float32":  # JSON has no NaN/Inf: carry them as strings
        data = [x if np.isfinite(x) else repr(x) for x in data]
    return {"dtype": t.dtype, "shape": list(t.shape), "data": data}


def _structure_tensor(value: Any, _: Any) -> TensorData:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise ValidationError("TensorData", f"expected {{dtype, shape, data}}, got {value!r:.80}")
    if value["dtype"] not in DTYPES:
        raise ValidationError(
            "TensorData.dtype", f"expected one of {DTYPES}, got {value['dtype']!r}"
        )
    flat = [float(x) if isinstance(x, str) else x for x in value["data"]]
    try:
        array = np.asarray(flat, dtype=value["dtype"]).reshape(value["shape"])
    except (ValueError, TypeError) as e:
        raise ValidationError(
            "TensorData.data", f"does not fit shape {value['shape']}: {e}"
        ) from None
    return TensorData(array)


class WrongTypeError(ValueError):
    """A document value of the wrong type (read strictly, never coerced)."""


def _shown(value: Any) -> str:
    return f"{value!r:.60}" if isinstance(value, str | int | float | bool) else type(value).__name__


def _exactly(kind: type[Any], expected: str) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if type(value) is not kind:
            raise WrongTypeError(f"expected {expected}, got {_shown(value)}")
        return value

    return structure


def _structure_float(value: Any, _: Any) -> float:
    if type(value) not in (int, float):
        raise WrongTypeError(f"expected a number, got {_shown(value)}")
    return float(value)


def _is_homogeneous_sequence(kind: Any) -> bool:
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    return (origin is tuple and len(args) == 2 and args[1] is Ellipsis) or (
        origin is list and len(args) == 1
    )


def _structure_sequence(value: Any, kind: Any) -> Any:
    """A list or a ``tuple[X, ...]`` from a list: never from a string, whose letters cattrs
    would take as the items (``"exact_match"`` read as eleven one-letter names)."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise WrongTypeError(f"expected a list, got {_shown(value)}")
    inner = typing.get_args(kind)[0]
    items = [converter.structure(v, inner) for v in value]
    return tuple(items) if typing.get_origin(kind) is tuple else items


def _structure_choice(value: Any, kind: type[StrEnum]) -> Any:
    """One of an enum's members, from its value (a string in a document): never another
    type, and a value it lacks is refused naming the choices."""
    if not isinstance(value, str):
        raise WrongTypeError(f"expected a string, got {_shown(value)}")
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(sorted(str(m.value) for m in kind))
        raise WrongTypeError(f"unknown value {value!r}; expected one of {choices}") from None


def _structure_source(value: Any, _: Any) -> WeightsSource:
    if not isinstance(value, str):
        raise WrongTypeError(f"expected a string, got {_shown(value)}")
    return WeightsSource.parse(value, "reference")


converter.register_structure_hook_func(_is_homogeneous_sequence, _structure_sequence)
# A reference to weights is written as given, and parsed as it is read.
converter.register_structure_hook(WeightsSource, _structure_source)
converter.register_unstructure_hook(WeightsSource, lambda source: source.text)
# StrEnum before str (a member is a str): its own hooks, as a document holds its value.
converter.register_structure_hook(StrEnum, _structure_choice)
converter.register_unstructure_hook(StrEnum, lambda member: member.value)
converter.register_structure_hook(bool, _exactly(bool, "true or false"))
converter.register_structure_hook(int, _exactly(int, "an integer"))
converter.register_structure_hook(str, _exactly(str, "a string"))
converter.register_structure_hook(float, _structure_float)
converter.register_unstructure_hook(TensorData, _unstructure_tensor)
converter.register_structure_hook(TensorData, _structure_tensor)
# A chunk is just its tokens: {"tokens": [...]} stays readable in JSONL.
converter.register_unstructure_hook(EncodedTextChunk, lambda c: {"tokens": list(c.tokens)})


def to_data(obj: Any) -> Any:
    return converter.unstructure(obj)


def from_data(cls: type[T], data: Any) -> T:
    try:
        return converter.structure(data, cls)
    except cattrs.BaseValidationError as e:
        raise ValidationError(
            cls.__name__, f"cannot read {cls.__name__}: {describe_error(e, cls.__name__)}"
        ) from e
    except ValidationError:
        raise
    except (
        TypeError,
        AttributeError,
        KeyError,
        ValueError,
    ) as e:  # e.g. a list where an object belongs
        raise ValidationError(
            cls.__name__, f"cannot read {cls.__name__} from {type(data).__name__}: {e}"
        ) from e


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, GalleyError | WrongTypeError):  # galley's messages say what to do
        return str(exc)
    if isinstance(exc, AttributeError) and str(exc).endswith(("'keys'", "'items'")):
        return "expected a table of settings (a TOML table or {key = value, ...})"
    return format_exception(exc, type_)


def describe_error(error: cattrs.BaseValidationError, path: str) -> str:
    """One line per problem, each with its path, keeping galley's own messages whole."""
    return "; ".join(cattrs.transform_error(error, path=path, format_exception=_format))


def to_json(obj: Any) -> str:
    return json.dumps(to_data(obj), sort_keys=True, separators=(",", ":"))


def from_json(cls: type[T], text: str) -> T:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValidationError(cls.__name__, f"not valid JSON: {e}") from None
    return from_data(cls, data)
