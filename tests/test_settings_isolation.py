"""Setting one thing changes that thing alone: for every workflow and every setting, given by
plain name in Python, by dotted name (``--set``) or in its section's TOML table, every other
setting keeps the workflow's own default (DPO's learning rate, RL's evaluation cadence), never
the generic default of the section class."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.settings import settings_from_mapping
from galley.core import GalleyError
from galley.core.configs import leaf_fields, section_types
from galley.core.domain.weights_source import WeightsSource
from galley.workflows import WORKFLOWS

# Values tried in turn for a setting of each type; the first that its validator takes and that
# differs from the default is used. Strings cover the enumerations the configs validate.
STRINGS = [
    "keep_start", "error", "cosine", "constant", "ipo", "all_tokens", "chat_template",
    "off_policy", "skip", "sequence", "ppo", "org/other-model", "validation", "elsewhere",
]  # fmt: skip
TUPLES = [("exact_match",), ("contains", "exact_match"), (2.0,)]


def _candidates(default: Any, kind: str, choices: type[StrEnum] | None) -> list[Any]:
    if choices is not None:  # an enum's members, as a TOML file or --set gives them
        return [member.value for member in choices]
    if kind.startswith("bool"):
        return [not default]
    if kind.startswith("int"):
        base = default if isinstance(default, int) else 1
        return [base + 1, base + 3, 1, 2, 7]
    if kind.startswith("float"):
        base = default if isinstance(default, float) else 0.5
        return [base * 0.5, base + 0.25, 0.3, 0.75, 2.0]
    if kind.startswith("str") or "WeightsSource" in kind:  # a reference is given as text
        return STRINGS
    if kind.startswith("tuple"):
        return TUPLES
    return []


def _changed_value(cls: type[Any], dotted: str, attribute: attrs.Attribute[Any]) -> Any:
    """A value of the setting, other than the default, that the config accepts alone."""
    default = _leaves(cls())[dotted]
    kind = attribute.type.__name__ if isinstance(attribute.type, type) else str(attribute.type)
    is_choice = isinstance(attribute.type, type) and issubclass(attribute.type, StrEnum)
    for value in _candidates(default, kind, attribute.type if is_choice else None):
        if value == default:
            continue
        try:
            settings_from_mapping(cls, {dotted: value}, "probe")
        except GalleyError:
            continue
        return value
    return None


def _leaves(config: Any) -> dict[str, Any]:
    sections = section_types(type(config))
    out = {}
    for name, _ in leaf_fields(type(config)):
        head, _, tail = name.partition(".")
        value = getattr(getattr(config, head), tail) if head in sections else getattr(config, name)
        out[name] = value.text if isinstance(value, WeightsSource) else value  # as given
    return out


CASES = [
    (workflow, dotted, attribute)
    for workflow, spec in WORKFLOWS.items()
    for dotted, attribute in leaf_fields(spec.config_type)
]


@pytest.mark.parametrize(
    ("workflow", "dotted", "attribute"), CASES, ids=[f"{w}:{d}" for w, d, _ in CASES]
)
def test_setting_one_field_changes_it_alone(
    workflow: str, dotted: str, attribute: attrs.Attribute[Any]
) -> None:
    cls = WORKFLOWS[workflow].config_type
    value = _changed_value(cls, dotted, attribute)
    if value is None:  # nothing in the candidates is valid alone (run_id needs resume, ...)
        assert dotted in UNSETTABLE_ALONE, f"{workflow}: no value found for {dotted}"
        return
    defaults = _leaves(cls())
    section, _, plain = dotted.rpartition(".")
    built = {
        "python": cls(**{plain: value}),
        "--set dotted": settings_from_mapping(cls, {dotted: value}, "flags"),
        "--set plain": settings_from_mapping(cls, {plain: value}, "flags"),
    }
    if section:
        built["toml table"] = settings_from_mapping(cls, {section: {plain: value}}, "run.toml")
    for how, config in built.items():
        leaves = _leaves(config)
        assert leaves[dotted] == value, how
        changed = {k for k in leaves if leaves[k] != defaults[k]}
        assert changed == {dotted}, f"{workflow} {how}: setting {dotted} also changed {changed}"


# Settings no value can change on its own: resume needs a run_id, distillation refuses a KL
# penalty (its advantages are the KL), and a reward weight needs a reward to weigh.
UNSETTABLE_ALONE = {"resume", "policy.kl_penalty_coef", "reward.reward_weights"}


def test_the_probe_finds_a_value_for_nearly_every_setting() -> None:
    found = sum(_changed_value(WORKFLOWS[w].config_type, d, a) is not None for w, d, a in CASES)
    assert found >= 0.9 * len(CASES), (found, len(CASES))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(WORKFLOWS)), st.data())
def test_any_two_settings_change_those_two_alone(workflow: str, data: st.DataObject) -> None:
    cls = WORKFLOWS[workflow].config_type
    fields = list(leaf_fields(cls))
    picked = data.draw(st.lists(st.sampled_from(fields), min_size=2, max_size=2, unique_by=str))
    given_values = {}
    for dotted, attribute in picked:
        value = _changed_value(cls, dotted, attribute)
        if value is not None:
            given_values[dotted] = value
    try:
        config = settings_from_mapping(cls, given_values, "flags")
    except GalleyError:  # two values valid alone may conflict (checked by their configs)
        return
    leaves, defaults = _leaves(config), _leaves(cls())
    assert {k for k in leaves if leaves[k] != defaults[k]} == set(given_values)
