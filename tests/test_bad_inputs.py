"""Bad input is refused clearly, before any work is lost: each of these names the culprit and
what was expected, and leaves no file behind. Parsers fed generated junk raise only galley's
own errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galley.adapters.cli import main
from galley.adapters.fsspec_blobs import FsspecBlobStore
from galley.adapters.hf_datasets import HFDatasetStore
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient, NoopTrainingClient, noop_adapters
from galley.core import (
    Datum,
    ForwardBackwardInput,
    GalleyError,
    ModelInput,
    SamplingParams,
    SessionConfig,
    TensorData,
    from_json,
)
from galley.core.data_formats import row_to_conversation
from galley.workflows.sft import SFTConfig, run
from tests.hf_models import make_model


class CliRefusedError(Exception):
    """The CLI exited non-zero; the message is what it printed."""


def cli(*args: str) -> Callable[[Path], Any]:
    def act(tmp: Path) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(list(args))
        if code != 0:
            raise CliRefusedError(" ".join(out.getvalue().split()))

    return act


def toml(text: str, *extra: str) -> Callable[[Path], Any]:
    def act(tmp: Path) -> None:
        (tmp / "run.toml").write_text(text)
        cli("run", "sft", "--config", str(tmp / "run.toml"), *extra)(tmp)

    return act


def sft_on_rows(rows: list[Any], **overrides: Any) -> Callable[[Path], Any]:
    def act(tmp: Path) -> None:
        path = tmp / "data.jsonl"
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        blobs = FsspecBlobStore(str(tmp / "out"))
        adapters = noop_adapters(
            datasets=HFDatasetStore(), blobs=blobs, training=NoopTrainingClient(blobs)
        )
        config = SFTConfig(
            **{
                "dataset": str(path),
                "max_steps": 2,
                "eval_holdout": 1,
                "run_id": "bad",
                **overrides,
            }
        )
        try:
            run(config, adapters)
        except GalleyError as e:
            raise (e.__cause__ if isinstance(e.__cause__, GalleyError) else e) from None

    return act


GOOD = {"prompt": "question", "completion": "answer"}


def noop_session() -> Any:
    return NoopTrainingClient(NoopBlobStore()).start_session(SessionConfig("m"))


def model_folder(tmp: Path, breakage: Callable[[Path], None]) -> Callable[[Path], Any]:
    folder = make_model(tmp / "model", "llama")
    breakage(folder)
    return lambda _: JaxTrainingClient(NoopHubClient(), NoopBlobStore()).start_session(
        SessionConfig(str(folder))
    )


def drop_tensor(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"))


def set_config(**changes: Any) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return change


def truncate(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:100])


# (case id, action (possibly built lazily from tmp), the message that must appear)
CASES: list[tuple[str, Any, str]] = [
    ("toml syntax", toml("[sft\nmax_steps = 3"), "is not valid TOML"),
    (
        "toml unknown key",
        toml("[sft]\nmax_stepz = 3"),
        r"unknown key\(s\) max_stepz; valid keys: base_model",
    ),
    ("toml wrong type", toml("[sft]\nbatch_size = 'eight'"), "batch_size"),
    ("toml negative lr", toml("[sft]\nlearning_rate = -1.0"), r"learning_rate: must be >= 0"),
    (
        "toml unknown train_on",
        toml("[sft]\ntrain_on = 'everything'"),
        "unknown value 'everything'; expected one of all_assistant_messages",
    ),
    ("toml unknown table", toml("[sfft]\nx = 1"), r"unknown table\(s\) sfft"),
    (
        "toml unknown adapter kind",
        toml("[adapters]\ntraining = 'tpu'"),
        "unknown adapter kind 'tpu'; available: jax, noop",
    ),
    ("toml unknown port", toml("[adapters]\ntrainer = 'noop'"), r"unknown port\(s\) trainer"),
    (
        "toml unknown adapter option",
        toml("[adapters.training]\nkind = 'noop'\nturbo = true"),
        r"unknown key\(s\) turbo",
    ),
    ("toml output escapes", toml("[sft]\noutput = '../outside'"), "output"),
    (
        "toml bad retry option",
        toml("[adapters.blobs]\nkind = 'noop'\nretry = {attempts = 3}"),
        r"\[adapters.blobs.retry\].*attempts",
    ),
    ("flag without =", cli("run", "sft", "--set", "max_steps"), "expected key=value"),
    (
        "flag bad adapter path",
        cli("run", "sft", "--set", "adapters.training.a.b=1"),
        "expected adapters.PORT=KIND",
    ),
    (
        "flag missing config",
        cli("run", "sft", "--config", "/nonexistent/run.toml"),
        "does not exist",
    ),
    ("flag run id with slash", cli("run", "sft", "--set", "run_id=a/b"), "run_id"),
    (
        "resume of a run that never ran",
        cli(
            "run",
            "sft",
            "--resume",
            "never-ran",
            "--set",
            "adapters.training=noop",
            "--set",
            "adapters.completer=noop",
        ),
        "run 'never-ran' has nothing to resume: no 'runs/never-ran/run.json'",
    ),
    (
        "jsonl not json",
        sft_on_rows([GOOD, GOOD, '{"prompt": "q", "completion": ']),
        r"data.jsonl, row 2, field '<json>': not valid JSON",
    ),
    (
        "row wrong type",
        sft_on_rows([GOOD, {"prompt": "q", "completion": 5}, GOOD]),
        "row 1, field 'completion': expected a string",
    ),
    (
        "row missing field",
        sft_on_rows([GOOD, GOOD, {"prompt": "q"}]),
        "row 2, field 'completion': missing",
    ),
    (
        "empty conversation",
        sft_on_rows([{"messages": []}, {"messages": [{"role": "user", "content": "q"}]}]),
        "empty conversation",
    ),
    (
        "unknown role",
        sft_on_rows([{"messages": [{"role": "wizard", "content": "x"}]}] * 3),
        "unknown role 'wizard'",
    ),
    (
        "row too long, no truncation",
        sft_on_rows(
            [GOOD, {"prompt": "q" * 300, "completion": "a"}, GOOD], truncate=False, max_length=64
        ),
        r"data.jsonl\[train\], row 1, field 'max_length'.*raise max_length or enable truncation",
    ),
    (
        "holdout takes everything",
        sft_on_rows([GOOD, GOOD], eval_holdout=2),
        "leaves none of the 2 rows",
    ),
    (
        "unknown data file type",
        lambda tmp: (
            HFDatasetStore().load(str((tmp / "d.txt").absolute()))
            if (tmp / "d.txt").write_text("x")
            else None
        ),
        "unknown file type",
    ),
    (
        "token outside vocabulary",
        lambda tmp: noop_session().forward([Datum.from_tokens([1, 99_999], [1.0, 1.0])]),
        r"data\[0\].target_tokens\[0\]: token id 99999 is outside the vocabulary",
    ),
    (
        "mismatched tensor shape",
        lambda tmp: Datum(
            ModelInput.from_ints([1, 2, 3]),
            {
                "target_tokens": TensorData(np.arange(3)),
                "weights": TensorData(np.ones(2, np.float32)),
            },
        ),
        r"loss_fn_inputs\['weights'\]: shape \(2,\) does not match model_input length 3",
    ),
    (
        "unknown loss",
        lambda tmp: ForwardBackwardInput([Datum.from_tokens([1, 2], [1, 1])], "mse"),
        "unknown loss 'mse'; expected one of cross_entropy, importance_sampling, ppo, cispo",
    ),
    (
        "unknown loss option",
        lambda tmp: noop_session().forward(
            [Datum.from_tokens([1, 2], [1, 1])], "cross_entropy", {"epsilon": 0.2}
        ),
        r"unknown key\(s\) epsilon for loss cross_entropy",
    ),
    (
        "negative temperature",
        lambda tmp: SamplingParams(temperature=-1.0),
        r"SamplingParams.temperature: must be >= 0",
    ),
    (
        "top_p zero",
        lambda tmp: SamplingParams(top_p=0.0),
        r"SamplingParams.top_p: must be in \(0.0, 1.0\]",
    ),
    (
        "negative max_tokens",
        lambda tmp: SamplingParams(max_tokens=-5),
        "SamplingParams.max_tokens: must be >= 0",
    ),
    (
        "model without config",
        lambda tmp: model_folder(tmp, lambda f: (f / "config.json").unlink())(tmp),
        "has no config.json",
    ),
    (
        "unsupported model type",
        lambda tmp: model_folder(tmp, set_config(model_type="gpt2"))(tmp),
        "'gpt2' is not supported; expected one of llama, mistral, qwen2, qwen3",
    ),
    (
        "missing tensor",
        lambda tmp: model_folder(tmp, drop_tensor)(tmp),
        "missing tensor 'model.norm.weight'",
    ),
    (
        "corrupted weights file",
        lambda tmp: model_folder(tmp, truncate("model.safetensors"))(tmp),
        "model.safetensors: is not a readable safetensors file",
    ),
    (
        "blob key with ..",
        lambda tmp: FsspecBlobStore(str(tmp / "b")).write("runs/../../etc", b"x"),
        r"key 'runs/../../etc' has an empty, '.' or '..' segment",
    ),
    (
        "absolute blob key",
        lambda tmp: FsspecBlobStore(str(tmp / "b")).write("/etc/passwd", b"x"),
        "is absolute",
    ),
    (
        "checkpoint name with slash",
        lambda tmp: noop_session().save_state("a/b"),
        r"save_state.name: 'a/b' is not a plain name",
    ),
]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("action", "message"), [(a, m) for _, a, m in CASES], ids=[c for c, _, _ in CASES]
)
def test_bad_input_is_refused_clearly_leaving_nothing_behind(
    tmp_path: Path, action: Any, message: str
) -> None:
    assert len(CASES) >= 30
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        # Inputs a case writes (its data file, its broken model) may stay; nothing else may appear.
        with pytest.raises((GalleyError, CliRefusedError), match=message):
            action(tmp_path)
        left = {
            f
            for f in files_under(tmp_path)
            if not f.startswith(("model/", "run.toml", "data.jsonl", "d.txt"))
        }
        assert left == set(), f"files left behind: {left}"
    finally:
        os.chdir(cwd)


junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_junk_toml_raises_only_config_errors(text: str) -> None:
    from galley.adapters.run_config import load_run_config

    path = Path(os.environ.get("TMPDIR", "/tmp")) / "galley-junk.toml"
    path.write_text(text)
    with contextlib.suppress(GalleyError):
        load_run_config("sft", path)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "max_steps",
                "batch_size",
                "learning_rate",
                "train_on",
                "output",
                "run_id",
                "seed",
                "x",
            ]
        ),
        junk_json,
        max_size=4,
    )
)
def test_junk_configs_raise_only_config_errors(data: dict[str, Any]) -> None:
    with contextlib.suppress(GalleyError):
        SFTConfig.from_mapping(data)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=60), junk_json.map(json.dumps)))
def test_junk_json_documents_raise_only_validation_errors(text: str) -> None:
    for cls in (Datum, SamplingParams, ModelInput):
        with contextlib.suppress(GalleyError):
            from_json(cls, text)


@settings(max_examples=150, deadline=None)
@given(junk_json)
def test_junk_rows_and_model_configs_raise_only_galley_errors(value: Any) -> None:
    from galley.adapters.jax.config import parse_config

    with contextlib.suppress(GalleyError):
        row_to_conversation(value, source="junk", index=0)
    if isinstance(value, dict):
        with contextlib.suppress(GalleyError):
            parse_config({"model_type": "llama", **value})
