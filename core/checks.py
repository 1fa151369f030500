"""attrs validators that raise :class:`ValidationError` naming ``Class.field``."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from enum import StrEnum
from typing import Any, TypeVar

import attrs

from galley.core.errors import ValidationError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def float_tuple(value: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(x) for x in value)


def str_frozenset(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def field_name(instance: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _number(instance: object, attribute: attrs.Attribute[Any], value: Any) -> float:
    if type(value) is float and math.isfinite(value):  # the common cases, checked first
        return value
    if type(value) is int:  # not a bool: type() is exact
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            field_name(instance, attribute), f"expected a number, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(
            field_name(instance, attribute), f"expected a finite number, got {value}"
        )
    return float(value)


def at_least(low: float) -> Validator:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if _number(instance, attribute, value) < low:
            raise ValidationError(field_name(instance, attribute), f"must be >= {low}, got {value}")

    return check


def in_range(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Validator:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        x = _number(instance, attribute, value)
        below = x <= low if low_open else x < low
        above = x >= high if high_open else x > high
        if below or above:
            raise ValidationError(
                field_name(instance, attribute), f"must be in {lo}{low}, {high}{hi}, got {value}"
            )

    return check


def integer(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            field_name(instance, attribute), f"expected an integer, got {value!r}"
        )


def boolean(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise ValidationError(
            field_name(instance, attribute), f"expected true or false, got {value!r}"
        )


def non_empty(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError(
            field_name(instance, attribute), f"expected a non-empty string, got {value!r}"
        )


def int_at_least(low: int) -> Validator:
    return attrs.validators.and_(integer, at_least(low))


def one_of(choices: Collection[str]) -> Validator:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValidationError(
                field_name(instance, attribute),
                f"unknown value {value!r}; expected one of {', '.join(sorted(choices))}",
            )

    return check


Choice = TypeVar("Choice", bound=StrEnum)


def choice(default: Choice) -> Any:
    """An attrs field holding one member of ``default``'s enum, given as the member or its
    value (what a settings file or flag gives); anything else is refused naming the field
    and the choices. Code compares members, never strings."""
    kind = type(default)

    def member(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            return value  # the validator refuses it, naming the field

    return attrs.field(default=default, converter=member, validator=one_of(list(kind)))


def safe_name(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A name used as one path segment: non-empty, no separators, no '..'."""
    from galley.core.keys import check_name

    check_name(value, field_name(instance, attribute))


def output_folder(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """The blob-store folder a workflow's runs go in: a key prefix, and not empty (that would
    mix every run's files with everything else at the top of the store)."""
    from galley.core.keys import check_key

    field = field_name(instance, attribute)
    if value == "":
        raise ValidationError(field, "expected the folder runs go in (e.g. 'runs'), got ''")
    check_key(value.rstrip("/") if isinstance(value, str) else value, field)
