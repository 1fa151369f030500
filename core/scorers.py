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
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from galley.core.errors import ConfigError

ScoreFn = Callable[[Mapping[str, Any], str], float]


@attrs.frozen
class Scorer:
    """A scorer and the name its mean is recorded under (``eval/<name>``)."""

    name: str
    spec: str  # as configured: what a resume resolves again
    fn: ScoreFn = attrs.field(repr=False)

    def __call__(self, example: Mapping[str, Any], completion: str) -> float:
        return float(self.fn(example, completion))


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
    if spec in BUILT_IN:
        return Scorer(spec, spec, BUILT_IN[spec])
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec.removeprefix("regex:"))
        except re.error as e:
            raise ConfigError(f"scorer {spec!r}: not a regular expression: {e}") from None
        return Scorer("regex", spec, lambda example, text: float(bool(pattern.search(text))))
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(
            f"unknown scorer {spec!r}; expected one of {', '.join(BUILT_IN)}, "
            "'regex:<pattern>' or 'module:function'"
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"scorer {spec!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ConfigError(f"scorer {spec!r} is not a function")
    return Scorer(name, spec, fn)
