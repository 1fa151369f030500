"""The CLI under junk: any ``--set`` keys and values and any TOML shape end in exit 0 (a run),
1 (a run that failed while running) or 2 (refused before anything was written), with a
message, and never in a traceback or a crash: a run that failed because code raised a
programming error (``TypeError``, ``KeyError``, ...) says "internal error", and fails the fuzz.
Runs on the noop adapters with few steps."""

from __future__ import annotations

import io
import os
import tomllib
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from galley.adapters.cli import main
from galley.adapters.composition import NoOptions, adapter_kinds
from galley.workflows.sft import SFTConfig

FIELDS = [f.name for f in attrs.fields(SFTConfig)]
# Kinds that run in milliseconds: the fuzz may pick any of them for any port.
FAST_KINDS = {
    port: sorted(k for k in kinds if k in {"noop", "fsspec", "jsonl", "sqlite", "local"})
    for port, kinds in adapter_kinds().items()
}
OPTIONS = {
    (port, option.name)
    for port, kinds in adapter_kinds().items()
    for kind in kinds.values()
    for option in attrs.fields(kind.options or NoOptions)
}
SLOW = {"max_steps", "num_epochs", "sample_max_tokens", "num_samples"}  # clamped below

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
scalar = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    text,
)
toml_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def literal(value: Any) -> str:
    """``value`` as a TOML literal (what ``--set key=<literal>`` parses)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {literal(v)}" for k, v in value.items()) + "}"
    return str(value)


# Mostly real keys with plausible values, so that many runs get past the checks; then junk.
keys = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS),
    st.sampled_from(sorted(f"adapters.{p}.{o}" for p, o in OPTIONS)),
    st.sampled_from([f"adapters.{p}" for p in FAST_KINDS] + ["adapters.default", "adapters"]),
    text,
)
PLAUSIBLE = ["linear", "constant", "cosine", "skip", "stop", "role_colon", "train", "test"]
values = st.one_of(
    st.integers(0, 8).map(str),
    st.floats(0, 1).map(literal),
    st.booleans().map(literal),
    st.sampled_from(PLAUSIBLE + sorted({k for kinds in FAST_KINDS.values() for k in kinds})).map(
        literal
    ),
    toml_value.map(literal),
    text,  # not a TOML literal: read as the plain string
)


def clamp(key: str, raw: str) -> str:
    """Keep runs short: a step count or sample length above 3 becomes 3."""
    if key in SLOW:
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            return raw
        if type(value) is int and value > 3:
            return "3"
    return raw


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stderr(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refusing a flag: its usage message, exit 2
            code = int(e.code or 0)
    return code, out.getvalue()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def typed(field: attrs.Attribute[Any]) -> st.SearchStrategy[tuple[str, str]]:
    """A value of the field's own type, small: most such runs should train."""
    kind = {"int": st.integers(0, 6), "float": st.floats(0, 1), "bool": st.booleans()}
    strategy = next(
        (v for name, v in kind.items() if str(field.type).startswith(name)),
        st.sampled_from([*PLAUSIBLE, str(field.default)]),
    )
    return st.tuples(st.just(field.name), strategy.map(literal))


plausible = st.one_of([typed(f) for f in attrs.fields(SFTConfig)])


@settings(
    max_examples=int(os.environ.get("GALLEY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(assignments=st.lists(st.one_of(plausible, plausible, st.tuples(keys, values)), max_size=4))
@example(assignments=[("eval_batch_size", "3"), ("learning_rate", "0.5")])  # a valid run, always
def test_any_set_flags_end_in_0_1_or_2(
    assignments: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    sets = ["--set", "max_steps=2", "--set", "num_samples=1"]
    for key, raw in assignments:
        sets += ["--set", f"{key}={clamp(key, raw)}"]
    code, err = run_cli(["run", "sft", "--adapters", "noop", *sets])
    out = capsys.readouterr().out
    event(f"exit {code}")
    assert code in (0, 1, 2), (code, sets, out[-2000:])
    assert "Traceback" not in out + err, (sets, out[-2000:])
    assert "internal error" not in out, (sets, out[-2000:])
    if code:
        assert "error:" in out or "usage:" in err, (sets, out[-2000:], err[-500:])


table_names = st.sampled_from(["sft", "adapters", "other"])
document = st.dictionaries(
    table_names,
    st.one_of(
        toml_value,
        st.dictionaries(st.sampled_from([*FIELDS, *FAST_KINDS, "default", "kind"]), toml_value),
        st.lists(st.dictionaries(st.sampled_from(FIELDS), scalar, max_size=2), max_size=2),
    ),
    max_size=3,
)


def toml_text(doc: dict[str, Any]) -> str:
    return "\n".join(f"{literal(k)} = {literal(v)}" for k, v in doc.items()) + "\n"


@settings(
    max_examples=int(os.environ.get("GALLEY_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=document)
def test_any_toml_shape_ends_in_0_1_or_2(
    doc: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(toml_text(doc), encoding="utf-8")
    sets = ["--set", "max_steps=2", "--set", "num_samples=1"]
    code, err = run_cli(["run", "sft", "--adapters", "noop", "--config", str(config), *sets])
    out = capsys.readouterr().out
    event(f"exit {code}")
    assert code in (0, 1, 2), (code, doc, out[-2000:])
    assert "Traceback" not in out + err, (doc, out[-2000:])
    assert "internal error" not in out, (doc, out[-2000:])


def test_the_fuzz_reaches_runs_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    """The harness itself: a good flag runs, a bad one is refused."""
    assert run_cli(["run", "sft", "--adapters", "noop", "--set", "max_steps=2"])[0] == 0
    assert run_cli(["run", "sft", "--adapters", "noop", "--set", "max_steps=2.5"])[0] == 2
    assert "expected an integer, got 2.5" in capsys.readouterr().out
    assert os.listdir(".") == []  # the noop adapters keep everything in memory
