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
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.hf.datasets import HFDatasetStore
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient, NoopTrainingClient, noop_adapters
from galley.adapters.settings import settings_from_mapping
from galley.core import (
    Datum,
    ForwardBackwardInput,
    GalleyError,
    LoraConfig,
    ModelInput,
    SamplingParams,
    SessionConfig,
    TensorData,
    from_json,
)
from galley.core.domain.data_formats import row_to_conversation
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


def edit_tensor(name: str, edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(folder / "model.safetensors"))
        tensors[name] = edit(tensors[name])
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return change


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def with_nan(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flat[3] = np.nan
    return array


def tokenizer_of(tmp: Path, breakage: Callable[[Path], None]) -> Any:
    """A session on a model folder whose tokenizer is broken: asked for when first used."""
    return model_folder(tmp, breakage)(tmp).tokenizer


def lora_session(tmp: Path, rank: int) -> Any:
    folder = make_model(tmp / "model", "llama")
    return JaxTrainingClient(NoopHubClient(), NoopBlobStore()).start_session(
        SessionConfig(str(folder), LoraConfig(rank=rank))
    )


def in_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


NOOP = ("run", "sft", "--adapters", "noop", "--set", "max_steps=2")


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
        r"data.jsonl, line 3, field '<json>': not valid JSON",
    ),
    (
        "row wrong type",
        sft_on_rows([GOOD, {"prompt": "q", "completion": 5}, GOOD]),
        "row 2, field 'completion': expected a string",
    ),
    (
        "row missing field",
        sft_on_rows([GOOD, GOOD, {"prompt": "q"}]),
        "row 3, field 'completion': missing",
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
            [GOOD, {"prompt": "q" * 300, "completion": "a"}, GOOD],
            truncation="error",
            max_length=64,
        ),
        r"data.jsonl\[train\], row 2, field 'max_length'.*raise max_length, or truncate",
    ),
    (
        "holdout leaves less than a batch",
        sft_on_rows([GOOD] * 20, eval_holdout=2, batch_size=19),
        "eval_holdout: holding out 2 of the 20 rows .* leaves 18, fewer than one batch",
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
        "'gpt2' is not supported; expected one of gemma2, gemma3_text, llama, mistral, mixtral",
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
        "tensor of the wrong shape",
        lambda tmp: model_folder(tmp, edit_tensor("model.norm.weight", lambda a: a[:-1]))(tmp),
        r"model.safetensors tensor 'model.norm.weight': has shape \(63,\); its config.json "
        r"implies \(64,\)",
    ),
    (
        "vocab_size beyond the embedding",
        lambda tmp: model_folder(tmp, set_config(vocab_size=4000))(tmp),
        r"tensor 'model.embed_tokens.weight': has shape \(\d+, 64\); its config.json implies "
        r"\(4000, 64\)",
    ),
    (
        "NaN weights",
        lambda tmp: model_folder(tmp, edit_tensor("model.layers.0.mlp.up_proj.weight", with_nan))(
            tmp
        ),
        "tensor 'model.layers.0.mlp.up_proj.weight': has 1 NaN or infinite values",
    ),
    (
        "zero heads",
        lambda tmp: model_folder(tmp, set_config(num_attention_heads=0))(tmp),
        "num_attention_heads: expected a positive integer, got 0",
    ),
    (
        "negative layers",
        lambda tmp: model_folder(tmp, set_config(num_hidden_layers=-1))(tmp),
        "num_hidden_layers: expected a positive integer, got -1",
    ),
    (
        "KV heads not dividing heads",
        lambda tmp: model_folder(tmp, set_config(num_key_value_heads=3))(tmp),
        r"num_key_value_heads: 3 does not divide num_attention_heads \(4\)",
    ),
    (
        "config.json not JSON",
        lambda tmp: model_folder(tmp, write("config.json", "{not json"))(tmp),
        "config.json: is not a readable JSON file",
    ),
    (
        "weight map out of the model folder",
        lambda tmp: model_folder(
            tmp,
            write(
                "model.safetensors.index.json",
                '{"weight_map": {"model.norm.weight": "../../../../etc/passwd"}}',
            ),
        )(tmp),
        r"weight_map\['model.norm.weight'\]: '../../../../etc/passwd' is not a file name in "
        "the model folder; refusing to open it",
    ),
    (
        "tokenizer not a tokenizer",
        lambda tmp: tokenizer_of(tmp, write("tokenizer.json", "garbage")),
        "tokenizer.json: is not a readable tokenizer",
    ),
    (
        "tokenizer config not JSON",
        lambda tmp: tokenizer_of(tmp, write("tokenizer_config.json", "{")),
        "tokenizer_config.json: is not readable JSON",
    ),
    (
        "LoRA rank above the projections",
        lambda tmp: lora_session(tmp, 40),
        "LoraConfig.rank: 40 is above 32, the smallest dimension of the attention projections",
    ),
    (
        "dtype int8",
        cli(*NOOP, "--set", "adapters.training=jax", "--set", "adapters.training.dtype=int8"),
        "dtype 'int8' is not one of float32, bfloat16, float16",
    ),
    (
        "no length buckets",
        cli(
            *NOOP, "--set", "adapters.training=jax", "--set", "adapters.training.length_buckets=[]"
        ),
        "length_buckets: expected positive integer lengths, got",
    ),
    (
        "a negative length bucket",
        cli(
            *NOOP,
            "--set",
            "adapters.training=jax",
            "--set",
            "adapters.training.length_buckets=[-4]",
        ),
        "length_buckets: expected positive integer lengths",
    ),
    (
        "samples longer than the context",
        cli(*NOOP, "--set", "sample_max_tokens=5000"),
        "sample_max_tokens: 5000 new tokens leave no room for a prompt in the model's context "
        "of 4096 tokens",
    ),
    ("flag max_steps 5.9", cli(*NOOP, "--set", "max_steps=5.9"), "expected an integer, got 5.9"),
    ("flag max_steps true", cli(*NOOP, "--set", "max_steps=true"), "expected an integer, got True"),
    (
        "flag learning_rate true",
        cli(*NOOP, "--set", "learning_rate=true"),
        "expected a number, got True",
    ),
    (
        "flag truncation false",
        cli(*NOOP, "--set", 'truncation="false"'),
        "unknown value 'false'; expected one of error, keep_end, keep_start",
    ),
    ("flag resume as text", cli(*NOOP, "--set", 'resume="false"'), "expected true or false"),
    (
        "flag base_model a list",
        cli(*NOOP, "--set", "base_model=[1]"),
        "expected a string, got list",
    ),
    ("toml sft not a table", toml("sft = 5", "--adapters", "noop"), r"\[sft\] must be a table"),
    (
        "toml adapters a string",
        toml('adapters = "noop"'),
        r"\[adapters\] must be a table .*not str",
    ),
    ("toml array of sft tables", toml("[[sft]]\nmax_steps = 2"), "not an array of tables"),
    (
        "config is a folder",
        lambda tmp: cli("run", "sft", "--config", str(tmp))(tmp),
        "is a folder; expected a file",
    ),
    (
        "config not UTF-8",
        lambda tmp: cli("run", "sft", "--config", str(in_file("run.toml", b"\xff\xfe=")(tmp)))(tmp),
        r"is not UTF-8 text \(byte 1\)",
    ),
    (
        "blobs URL through a file",
        lambda tmp: cli(
            *NOOP,
            "--set",
            "adapters.blobs=fsspec",
            "--set",
            f"adapters.blobs.url={in_file('d.txt', b'x')(tmp)}/runs",
        )(tmp),
        "blob store '.*d.txt/runs' cannot be a folder here: .*d.txt' is a file",
    ),
    (
        "blobs URL under /dev/null",
        cli(*NOOP, "--set", "adapters.blobs=fsspec", "--set", "adapters.blobs.url=/dev/null/x"),
        "blob store '/dev/null/x' cannot be a folder here",
    ),
    (
        "blobs URL of an unknown protocol",
        cli(*NOOP, "--set", "adapters.blobs=fsspec", "--set", "adapters.blobs.url=bogus://x"),
        "blob store 'bogus://x' is not a usable fsspec URL: Protocol not known: bogus",
    ),
    (
        "SQLite path a folder",
        lambda tmp: cli(
            *NOOP, "--set", "adapters.metrics=sqlite", "--set", f"adapters.metrics.path={tmp}"
        )(tmp),
        "metrics database .* is a folder; expected a file",
    ),
    (
        "log file a folder",
        lambda tmp: cli(*NOOP, "--log-file", str(tmp))(tmp),
        "--log-file .* is a folder; expected a file",
    ),
    (
        "log file unwritable",
        cli(*NOOP, "--log-file", "/dev/null/events.jsonl"),
        "--log-file '/dev/null/events.jsonl' cannot be opened for writing",
    ),
    (
        "sample with a malformed manifest",
        lambda tmp: cli(
            "sample",
            "--checkpoint",
            str(in_file("manifest.json", b"{broken")(tmp).parent),
            "hi",
        )(tmp),
        "manifest.json' is unreadable",
    ),
    (
        "sample with a folder of prompts",
        lambda tmp: cli("sample", "--checkpoint", str(tmp), "--prompts-file", str(tmp))(tmp),
        "--prompts-file .* is a folder; expected a file",
    ),
    (
        "plot of a metrics line without run_id",
        lambda tmp: cli(
            "plot", str(in_file("metrics.jsonl", b'{"step": 1, "metrics": {}}\n')(tmp).parent)
        )(tmp),
        r"metrics.jsonl, line 1: expected a metrics row with run_id",
    ),
    (
        "empty jsonl",
        sft_on_rows([]),
        r"data.jsonl, field '<file>': has no rows \(the file is empty\)",
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
            if not f.startswith(("model/", "run.toml", "data.jsonl", "d.txt", "manifest.json"))
            and f != "metrics.jsonl"
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
    from galley.adapters.cli.run_config import load_run_config

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
        settings_from_mapping(SFTConfig, data, "sft config")


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
