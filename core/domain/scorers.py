"""Scorers: how good a sampled answer is, from 0 to 1.

A scorer is ``fn(example, completion) -> float``, where ``example`` is the dataset row's
conversation up to the answer (``messages``: role/content dicts) and its ``reference``
answer. Configs name scorers as text, which a run records and a resume resolves again:

- ``exact_match``: the answer is the reference (surrounding whitespace aside);
- ``contains``: the reference appears in the answer;
- ``char_similarity``: how much of the answer matches the reference, character by
  character (difflib's ratio, 0 to 1): partial credit, for rewards;
- ``regex:<pattern>``: the pattern matches somewhere in the answer;
- ``module:function``: your own function, imported by that path.
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import structlog

from galley.core.errors import ConfigError, GalleyError, ValidationError

ScoreFn = Callable[[Mapping[str, Any], str], float]


@attrs.frozen
class Scorer:
    """A scorer and the name its mean is recorded under (``eval/<name>``)."""

    name: str
    spec: str  # as configured: what a resume resolves again
    fn: ScoreFn = attrs.field(repr=False)
    # It compares the answer with the row's reference: rows without one cannot be scored.
    needs_reference: bool = False

    def __call__(self, example: Mapping[str, Any], completion: str) -> float:
        try:
            value = self.fn(example, completion)
        except (GalleyError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as e:  # the function's own failure, named as its
            raise ScoreError(self.spec, f"raised {type(e).__name__}: {e}") from e
        return checked_score(self.spec, 0, value)


class ScoreError(GalleyError):
    """A reward or scorer failed, or returned something that is not a score; names it."""

    def __init__(self, spec: str, message: str, what: str = "scorer") -> None:
        super().__init__(f"{what} {spec!r} {message}")
        self.spec = spec


def checked_score(spec: str, index: int, value: Any, what: str = "scorer") -> float:
    """A score as a float: a real number (bools and numpy scalars too), never text that looks
    like one, and finite."""
    if isinstance(value, str | bytes) or not isinstance(value, numbers.Real):
        shown = f"{type(value).__name__} {value!r:.40}"
        message = f"returned {shown} for completion {index}; expected a number"
        raise ScoreError(spec, message, what)
    number = float(value)
    if not math.isfinite(number):
        message = f"returned {number} for completion {index}; {what}s must be finite numbers"
        raise ScoreError(spec, message, what)
    return number


def exact_match(example: Mapping[str, Any], completion: str) -> float:
    return float(completion.strip() == str(example["reference"]).strip())


def contains(example: Mapping[str, Any], completion: str) -> float:
    return float(str(example["reference"]).strip() in completion)


def char_similarity(example: Mapping[str, Any], completion: str) -> float:
    reference = str(example["reference"]).strip()
    return difflib.SequenceMatcher(None, completion.strip(), reference).ratio()


BUILT_IN: Mapping[str, ScoreFn] = {
    "exact_match": exact_match,
    "contains": contains,
    "char_similarity": char_similarity,
}


def resolve_scorer(spec: str) -> Scorer:
    """The scorer ``spec`` names; ConfigError naming it when there is none such."""
    if spec in BUILT_IN:  # each compares with the reference
        return Scorer(spec, spec, BUILT_IN[spec], needs_reference=True)
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec.removeprefix("regex:"))
        except re.error as e:
            raise ConfigError(f"scorer {spec!r}: not a regular expression: {e}") from None
        return Scorer("regex", spec, lambda example, text: float(bool(pattern.search(text))))
    if spec in _HANDED_OVER:
        return Scorer(spec.rpartition(".")[2].rpartition(":")[2], spec, _HANDED_OVER[spec])
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(
            f"unknown scorer {spec!r}; expected one of {', '.join(BUILT_IN)}, "
            "'regex:<pattern>' or 'module:function'"
        )
    fn = _import(spec, module, name)
    if not callable(fn):
        raise ConfigError(f"scorer {spec!r} is not a function")
    return Scorer(name.rpartition(".")[2], spec, fn)


def _import(spec: str, module: str, qualname: str) -> Any:
    """``module:qualname``, the module looked for in the current folder first (as ``python -m``
    and pytest do), then on the import path."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        return target
    except ImportError as e:
        raise ConfigError(
            f"scorer {spec!r} cannot be imported: {e} (looked in the current folder "
            f"{here!r}, then on the import path)"
        ) from None
    except AttributeError:
        raise ConfigError(
            f"scorer {spec!r} cannot be imported: {module} has no {qualname}"
        ) from None
    finally:
        if added:
            sys.path.remove(here)


# Functions handed to a config in Python, by the spec recorded for them: found by that spec
# in this process even when it cannot be imported (a lambda, a closure, a script's function).
_HANDED_OVER: dict[str, Callable[..., Any]] = {}


def scorer_spec(value: Any, field: str) -> str:
    """A scorer or reward as given, as the text a run records: a name is kept; a function
    becomes ``module:qualname``, which a resume imports again. A function that cannot be
    imported by that name is accepted for this process, with a warning that the CLI cannot
    resume the run."""
    if isinstance(value, str):
        return value
    if not callable(value):
        raise ValidationError(
            field, f"expected a scorer name or a function, got {type(value).__name__}"
        )
    module = getattr(value, "__module__", None) or "?"
    qualname = getattr(value, "__qualname__", None) or repr(value)
    spec = f"{module}:{qualname}"
    _HANDED_OVER[spec] = value
    importable = module != "__main__" and "<" not in qualname
    if importable:
        try:
            importable = _import(spec, module, qualname) is value
        except ConfigError:
            importable = False
    if not importable:
        structlog.get_logger("galley").warning(
            "scorer.not_importable",
            field=field,
            spec=spec,
            note="this process runs it; a resumed run cannot import it: define it at the top "
            "level of a module to resume the run in another process",
        )
    return spec


def scorer_specs(value: Any, field: str) -> tuple[str, ...]:
    """A list of scorer names or functions as their specs (a config's converter). A lone
    string is refused: its letters would be read as names."""
    if isinstance(value, str) or callable(value):
        raise ValidationError(field, f"expected a list, got {value!r:.60}: write [{value!r:.60}]")
    return tuple(scorer_spec(v, field) for v in value)
