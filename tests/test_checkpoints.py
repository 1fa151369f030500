"""A run's checkpoints after training, on real files: list, show (verified or not), delete
(refused for the newest good one and while the run is in use), best by a metric; the same
through `galley runs` and `galley checkpoints`."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.cli import main
from galley.adapters.cli.run_config import load_run_config
from galley.adapters.composition import build_adapters
from galley.core import Adapters
from galley.core.errors import ConfigError, NotFoundError, WorkflowError
from galley.core.runs.checkpoint_catalog import (
    best_checkpoint,
    delete_checkpoint_at,
    list_checkpoints,
    list_runs,
    show_checkpoint,
)
from galley.core.runs.layout import RunPaths
from galley.core.runs.registry import list_models, register, sampler_of, show_model
from galley.core.runs.retention import steps_to_drop
from galley.core.runs.run_record import RunInUseError, plain_saved_settings
from galley.workflows.sft import SFTConfig
from galley.workflows.sft import run as run_sft
from tests.hf_hub_server import fake_hub
from tests.test_run_integrity import P

ON_DISK = P[:6]  # noop training on files: the adapters part of the run-integrity preset


def on_disk() -> Adapters:
    """The adapters the CLI's ``ON_DISK`` options build (files under the working folder)."""
    sets = [s for s in ON_DISK[2:] if s != "--set"]
    return build_adapters(load_run_config("eval", None, sets, "noop").adapters)


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Adapters:
    """Run ``r`` with checkpoints at steps 2, 4 and 6 and held-out evals at 3 and 6."""
    monkeypatch.chdir(tmp_path)
    adapters = on_disk()
    config = SFTConfig(max_steps=6, checkpoint_every=2, eval_every=3, run_id="r", num_samples=0)
    run_sft(config, adapters)
    return adapters


def test_runs_and_checkpoints_are_listed_with_their_metrics(trained: Adapters) -> None:
    assert [(r.run_id, r.workflow, r.checkpoints, r.newest_step) for r in list_runs(trained)] == [
        ("r", "sft", 3, 6)
    ]
    listed = list_checkpoints(trained, "r")
    assert [c.step for c in listed] == [2, 4, 6]
    assert all(c.size > 0 and c.verified is None for c in listed)
    assert "loss" in listed[0].metrics and "eval/nll" not in listed[0].metrics
    assert "eval/nll" in listed[2].metrics  # an eval at 6, none at 2 or 4
    with pytest.raises(NotFoundError, match="run 'nope' has no record"):
        list_checkpoints(trained, "nope")


def test_show_verifies_a_checkpoint_against_its_manifest(trained: Adapters, tmp_path: Path) -> None:
    newest = show_checkpoint(trained, "r")
    assert (newest.step, newest.verified, newest.problem) == (6, True, None)
    blob = next(p for p in (tmp_path / newest.key).iterdir() if p.name != "manifest.json")
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    broken = show_checkpoint(trained, "r", 6)
    assert broken.verified is False and "corrupt" in str(broken.problem)
    with pytest.raises(NotFoundError, match="no checkpoint at step 5 \\(it has steps 2, 4, 6\\)"):
        show_checkpoint(trained, "r", 5)


def test_delete_keeps_the_newest_good_checkpoint_and_waits_for_the_run(
    trained: Adapters, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="newest good checkpoint"):
        delete_checkpoint_at(trained, "r", 6)
    held = trained.blobs.lock(RunPaths("runs", "r").lock, "a training run")
    with pytest.raises(RunInUseError, match="in use by a training run"):
        delete_checkpoint_at(trained, "r", 2)
    held.release()
    gone = delete_checkpoint_at(trained, "r", 2)
    assert not (tmp_path / gone.key).exists()
    assert [c.step for c in list_checkpoints(trained, "r")] == [4, 6]
    # Once 6 no longer verifies, 4 is what a resume would load: 6 may go, 4 may not.
    state = tmp_path / "runs/r/state/step-000006"
    blob = next(p for p in state.iterdir() if p.name != "manifest.json")
    blob.write_bytes(b"not the saved state")
    assert delete_checkpoint_at(trained, "r", 6).step == 6
    with pytest.raises(ConfigError, match="newest good"):
        delete_checkpoint_at(trained, "r", 4)
    assert delete_checkpoint_at(trained, "r", 4, force=True).step == 4
    assert list_checkpoints(trained, "r") == []


def test_best_considers_only_steps_that_recorded_the_metric(trained: Adapters) -> None:
    assert best_checkpoint(trained, "r", "eval/nll").step == 6  # the only checkpoint evaluated
    assert best_checkpoint(trained, "r", "loss").step == 6
    assert best_checkpoint(trained, "r", "loss", maximize=True).step == 2
    with pytest.raises(NotFoundError, match="no checkpoint step of run 'r' recorded 'eval/acc'"):
        best_checkpoint(trained, "r", "eval/acc")


def test_the_commands_show_and_refuse_as_the_api_does(
    trained: Adapters, capsys: pytest.CaptureFixture[str]
) -> None:
    def say(*args: str) -> tuple[int, str]:
        code = main([*args, *ON_DISK])
        return code, " ".join(capsys.readouterr().out.split())

    code, out = say("runs", "list")
    assert code == 0 and "│ r │ sft" in out
    code, out = say("checkpoints", "list", "r")
    assert code == 0 and all(f"│ {s} │" in out for s in (2, 4, 6))
    code, out = say("checkpoints", "show", "r:4")
    assert code == 0 and "step 4" in out and "verified: yes" in out
    assert say("checkpoints", "delete", "r:6")[0] == 2  # the newest good one
    assert say("checkpoints", "delete", "r")[0] == 2  # no step
    code, out = say("checkpoints", "delete", "r:2")
    assert code == 0 and "deleted step 2 of r" in out
    code, out = say("checkpoints", "best", "r", "--metric", "loss", "--max")
    assert code == 0 and "step 4" in out
    code, out = say("checkpoints", "best", "r", "--metric", "eval/acc")
    assert code == 2 and "recorded 'eval/acc'" in out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 99), min_size=1, max_size=12, unique=True).map(sorted),
    st.integers(0, 4),
    st.integers(0, 4),
    st.data(),
)
def test_retention_keeps_the_newest_the_newest_n_and_the_best_n(
    steps: list[int], keep_newest: int, keep_best: int, data: st.DataObject
) -> None:
    scored = data.draw(st.lists(st.sampled_from(steps), unique=True))
    scores = {s: data.draw(st.floats(-5, 5)) for s in scored}
    maximize = data.draw(st.booleans())
    drop = steps_to_drop(steps, keep_newest, keep_best, scores, maximize)
    kept = [s for s in steps if s not in drop]
    assert set(drop) <= set(steps) and steps[-1] in kept
    if not keep_newest and not keep_best:
        assert drop == []
    if keep_newest:
        assert set(steps[-keep_newest:]) <= set(kept)
    if keep_best:
        ranked = sorted(scored, key=lambda s: (-scores[s] if maximize else scores[s], -s))
        best = ranked[:keep_best]
        assert set(best) <= set(kept)
        # Nothing else stays: neither newest N, nor best N, nor the newest.
        others = (
            set(kept) - set(best) - {steps[-1]} - set(steps[-keep_newest:] if keep_newest else [])
        )
        assert not others


def test_checkpoints_keep_the_best_by_a_metric_with_sampler_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    adapters = on_disk()
    config = SFTConfig(
        max_steps=8,
        checkpoint_every=2,
        eval_every=2,
        keep_best=1,
        keep_metric="eval/nll",
        checkpoint_sampler=True,
        run_id="b",
        num_samples=0,
    )
    run_sft(config, adapters)
    nll = {s: c.metrics["eval/nll"] for c in list_checkpoints(adapters, "b") for s in [c.step]}
    listed = list_checkpoints(adapters, "b")
    kept = [c.step for c in listed]
    # The newest (8) and the best of the steps seen when each was saved.
    assert 8 in kept and len(kept) <= 2
    assert all(c.sampler and (tmp_path / c.sampler / "manifest.json").exists() for c in listed)
    best = best_checkpoint(adapters, "b", "eval/nll")
    assert best.metrics["eval/nll"] == min(nll.values())
    dropped = [s for s in (2, 4, 6) if s not in kept]
    for step in dropped:  # state and sampler weights both gone
        assert not (tmp_path / f"runs/b/state/step-{step:06d}").exists()
        assert not (tmp_path / f"runs/b/sampler/step-{step:06d}").exists()


# -- the model registry --------------------------------------------------------------------


def test_a_registered_model_records_its_lineage_and_starts_another_run(
    trained: Adapters, tmp_path: Path
) -> None:
    entry = register(trained, "r", "shout-v1", step=4, tags=["prod"])
    assert (entry.run_id, entry.step, entry.workflow, entry.base_model) == (
        "r",
        4,
        "sft",
        "galley/tiny-lm",
    )
    assert entry.dataset == "galley/tiny-instruct" and len(entry.config_hash) == 64
    assert entry.state == "runs/r/state/step-000004" and "loss" in entry.metrics
    assert [e.name for e in list_models(trained, "prod")] == ["shout-v1"]
    assert list_models(trained, "staging") == []
    assert show_model(trained, "registry:shout-v1") == entry
    with pytest.raises(ConfigError, match="registered already"):
        register(trained, "r", "shout-v1")
    # A run started from it records it as its parent, and learns from its weights.
    child = run_sft(
        SFTConfig(max_steps=2, init_from="registry:shout-v1", run_id="c", num_samples=0), trained
    )
    assert child.steps == 2
    assert register(trained, "c", "child").parent == "registry:shout-v1"


def test_a_registered_checkpoint_deleted_or_corrupted_underneath_is_refused_clearly(
    trained: Adapters, tmp_path: Path
) -> None:
    register(trained, "r", "gone", step=2)
    register(trained, "r", "broken", step=4)
    registry = (tmp_path / "runs" / "registry" / "models.json").read_bytes()
    delete_checkpoint_at(trained, "r", 2)
    with pytest.raises(NotFoundError, match="model 'gone': its checkpoint is gone"):
        show_model(trained, "gone")
    blob = next(
        p for p in (tmp_path / "runs/r/state/step-000004").iterdir() if p.name != "manifest.json"
    )
    blob.write_bytes(b"altered")
    with pytest.raises(WorkflowError, match="model 'broken': its checkpoint no longer verifies"):
        run_sft(
            SFTConfig(max_steps=1, init_from="registry:broken", run_id="d", num_samples=0), trained
        )
    # Nothing else was touched: the registry as written, the other checkpoint intact.
    assert (tmp_path / "runs" / "registry" / "models.json").read_bytes() == registry
    assert show_checkpoint(trained, "r", 6).verified
    with pytest.raises(NotFoundError, match="no model named 'nope' is registered"):
        show_model(trained, "nope")


def test_a_registered_checkpoint_trained_again_under_it_is_refused(
    trained: Adapters, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delete a registered step, resume the run with other settings: the step is written
    again with other weights; the name refuses it instead of handing them out."""
    entry = register(trained, "r", "pinned", step=4)
    assert entry.manifest_sha256 is not None and len(entry.manifest_sha256) == 64
    for step in (6, 4):
        delete_checkpoint_at(trained, "r", step, force=True)
    argv = ["run", "sft", "--resume", "r", "--set", "learning_rate=0.01", "--accept-changes"]
    assert main([*argv, *ON_DISK]) == 0
    assert show_checkpoint(trained, "r", 4).verified  # a good checkpoint, but another one
    with pytest.raises(ConfigError, match="model 'pinned': the checkpoint at 'runs/r/state/step"):
        show_model(trained, "pinned")
    capsys.readouterr()
    assert main(["sample", "--model", "registry:pinned", "hi", *ON_DISK[:0]]) == 2
    assert "is not the one registered" in " ".join(capsys.readouterr().out.split())


def test_the_models_commands(trained: Adapters, capsys: pytest.CaptureFixture[str]) -> None:
    def say(*args: str) -> tuple[int, str]:
        code = main([*args, *ON_DISK])
        return code, " ".join(capsys.readouterr().out.split())

    code, out = say("models", "register", "r:6", "--name", "v1", "--tag", "prod")
    assert code == 0 and "registered v1: r step 6" in out
    assert say("models", "register", "r", "--name", "v1")[0] == 2
    code, out = say("models", "list", "--tag", "prod")
    assert code == 0 and "v1" in out and "galley/tiny-lm" in out
    code, out = say("models", "show", "v1")
    assert code == 0 and "config_hash:" in out and "state: runs/r/state/step-000006" in out
    assert re.search(r"registered: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out)  # ISO, not seconds
    assert "sampler:" not in out and "parent:" not in out  # empty: left out
    assert "tags: prod" in out


def test_the_commands_work_on_s3(
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.chdir(tmp_path)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bucket = f"galley-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    stores = tmp_path / "s3.toml"
    stores.write_text(
        "[adapters]\ntraining = 'noop'\ndatasets = 'noop'\nhub = 'noop'\ncompleter = 'noop'\n"
        f"[adapters.blobs]\nkind = 'fsspec'\nurl = 's3://{bucket}'\n"
        f"[adapters.blobs.storage_options.client_kwargs]\nendpoint_url = '{s3_endpoint}'\n"
        f"[adapters.metrics]\nkind = 'jsonl'\nurl = 's3://{bucket}/runs'\n"
        f"[adapters.metrics.storage_options.client_kwargs]\nendpoint_url = '{s3_endpoint}'\n"
    )

    def say(*args: str) -> tuple[int, str]:
        code = main([*args, "--config", str(stores)])
        return code, " ".join(capsys.readouterr().out.split())

    sets = ["--set", "max_steps=4", "--set", "checkpoint_every=2", "--set", "eval_every=2"]
    assert say("run", "sft", *sets, "--set", "run_id=s", "--set", "num_samples=0")[0] == 0
    assert say("runs", "list")[1].count("│ s │ sft") == 1
    code, out = say("checkpoints", "list", "s")
    assert code == 0 and "│ 2 │" in out and "│ 4 │" in out
    assert "verified: yes" in say("checkpoints", "show", "s:2")[1]
    assert say("checkpoints", "best", "s", "--metric", "eval/nll")[0] == 0
    assert say("models", "register", "s:4", "--name", "on-s3")[0] == 0
    assert say("checkpoints", "delete", "s:2")[0] == 0
    assert "state: runs/s/state/step-000004" in say("models", "show", "on-s3")[1]
    assert say("push", "s", "--to", str(tmp_path / "out"))[0] == 0
    fs = s3fs.S3FileSystem(**options)
    assert fs.exists(f"{bucket}/runs/registry/models.json")
    assert not fs.exists(f"{bucket}/runs/s/state/step-000002/manifest.json")
    assert not (tmp_path / "runs").exists()  # nothing went to local files


# -- publishing ----------------------------------------------------------------------------


def test_push_sends_the_exported_weights_and_a_model_card_to_the_hub(
    trained: Adapters, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "hf_" + "x" * 30
    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", secret)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        code = main(["push", "r:4", "--repo", "me/shout", "--private", *ON_DISK])
        out = capsys.readouterr().out
    assert code == 0 and "pushed" in out and secret not in out
    repo = hub.repos["me/shout"]
    assert repo["visibility"] == "private"
    exported = show_checkpoint(trained, "r", 4)
    files = repo["files"]
    assert {"README.md", "sampler.json"} <= set(files)  # the noop adapter's sampler export
    card = files["README.md"].decode()
    assert card.startswith("---\nbase_model: galley/tiny-lm\nlibrary_name: peft\n")
    assert "datasets: [galley/tiny-instruct]" in card and "# r, step 4" in card
    assert "| lora_rank | 16 |" in card and f"| loss | {exported.metrics['loss']:.6g} |" in card
    assert all(auth == f"Bearer {secret}" for _, _, auth in hub.requests)
    assert {p.split("?")[0].rsplit("/", 2)[-2] for _, p, _ in hub.requests} >= {
        "preupload",
        "commit",
    }


def test_push_writes_the_same_files_to_any_fsspec_url(trained: Adapters, tmp_path: Path) -> None:
    assert main(["push", "r", "--to", f"file://{tmp_path}/out", *ON_DISK]) == 0
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"README.md", "sampler.json"} <= written
    assert "# r, step 6" in (tmp_path / "out" / "README.md").read_text()
    assert main(["push", "r", *ON_DISK]) == 2  # neither --repo nor --to


def test_push_merged_is_refused_where_the_training_adapter_cannot_merge(
    trained: Adapters, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", "r", "--merged", "--to", str(tmp_path / "m"), *ON_DISK]) == 2
    assert "cannot merge weights" in capsys.readouterr().out
    assert not (tmp_path / "m").exists()


def test_a_registered_model_with_sampler_weights_is_sampled_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["models", "register", "nothing", "--name", "x", *ON_DISK]) == 2  # no such run
    config = ["--set", "max_steps=2", "--set", "checkpoint_every=2", "--set", "run_id=j"]
    sets = ["--set", "checkpoint_sampler=true", "--set", "num_samples=0", "--set", "eval_every=0"]
    assert main(["run", "sft", *config, *sets]) == 0  # the JAX adapter, the embedded model
    assert main(["models", "register", "j", "--name", "tiny-shout"]) == 0
    capsys.readouterr()
    assert main(["sample", "--model", "registry:tiny-shout", "Shout this: red boat"]) == 0
    out = capsys.readouterr().out
    assert "> Shout this: red boat" in out and len(out.splitlines()) >= 2
    assert main(["sample", "--model", "tiny-shout", "hi"]) == 2  # not registry:...


def test_sampling_a_registered_model_without_sampler_weights_is_refused(
    trained: Adapters, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step other than the last, saved without sampler weights: nothing samples exactly it
    (the last step's are the run's final export)."""
    register(trained, "r", "no-sampler", step=4)
    assert main(["sample", "--model", "registry:no-sampler", "hi"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "model 'no-sampler' (run 'r', step 4) has no sampler weights of its step" in out
    assert "(the run's final export is of step 6)" in out
    assert sampler_of(trained, register(trained, "r", "last")) == "runs/r/sampler/final"


def test_a_registered_model_as_base_model_is_its_base_starting_from_its_weights(
    trained: Adapters,
) -> None:
    from galley.core.runs.run_record import read_run_record

    register(trained, "r", "base-v1", step=4)
    run_sft(
        SFTConfig(base_model="registry:base-v1", max_steps=1, run_id="k", num_samples=0), trained
    )
    saved = plain_saved_settings(read_run_record(trained, "runs", "k"))
    assert (saved["base_model"], saved["init_from"]) == ("galley/tiny-lm", "registry:base-v1")
    both = SFTConfig(base_model="registry:base-v1", init_from="r", run_id="k2", num_samples=0)
    with pytest.raises(ConfigError, match="leave init_from \\('r'\\) out"):
        run_sft(both, trained)
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        run_sft(SFTConfig(base_model="registry:nope", run_id="k3", num_samples=0), trained)


def test_saved_checkpoints_lists_complete_ones_and_deletes_manifest_first() -> None:
    """The by-name listing `galley serve` uses: a folder without a manifest (a save that
    failed part-way) is not offered; deleting removes every blob of one checkpoint only."""
    from galley.adapters.noop import NoopBlobStore
    from galley.core.runs.checkpoint_catalog import delete_saved_checkpoint, saved_checkpoints
    from galley.core.runs.manifest import write_checkpoint

    blobs = NoopBlobStore()
    write_checkpoint(
        blobs,
        "runs/r/state/a",
        kind="state",
        name="a",
        run_id="r",
        step=3,
        files={"w.bin": b"12345"},
        meta={"base_model": "m"},
    )
    write_checkpoint(
        blobs,
        "runs/r/sampler/b",
        kind="sampler",
        name="b",
        run_id="r",
        step=4,
        files={"adapter.bin": b"xy"},
    )
    blobs.write("runs/r/state/partial/w.bin", b"no manifest")
    found = {s.ref.key: s for s in saved_checkpoints(blobs, "runs/r")}
    assert sorted(found) == ["runs/r/sampler/b", "runs/r/state/a"]
    a = found["runs/r/state/a"]
    assert (a.ref.kind, a.ref.name, a.ref.step, a.ref.base_model, a.size) == (
        "state",
        "a",
        3,
        "m",
        5,
    )
    assert delete_saved_checkpoint(blobs, "runs/r/state/a").ref.name == "a"
    assert blobs.list("runs/r/state/a") == [] and blobs.exists("runs/r/sampler/b/adapter.bin")
    with pytest.raises(NotFoundError):
        delete_saved_checkpoint(blobs, "runs/r/state/partial")
    assert blobs.exists("runs/r/state/partial/w.bin")  # not a checkpoint: left alone


def test_push_never_overwrites_a_users_files_without_force(
    trained: Adapters, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "README.md").write_text("my own notes")
    assert main(["push", "r", "--to", str(target), *ON_DISK]) == 2
    out = capsys.readouterr().out
    assert "already has README.md; give --force to overwrite them" in " ".join(out.split())
    assert sorted(p.name for p in target.iterdir()) == ["README.md"]  # nothing written
    assert (target / "README.md").read_text() == "my own notes"
    assert main(["push", "r", "--to", str(target), "--force", *ON_DISK]) == 0
    assert "# r, step 6" in (target / "README.md").read_text()


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        (["--repo", "not a repo!"], 2, "--repo 'not a repo!' is not a Hub repo id like USER/NAME"),
        (["--repo", "a/b/c"], 2, "is not a Hub repo id like USER/NAME"),
        (["--to", "nosuchprotocol://x"], 2, "--to 'nosuchprotocol://x' is not a usable fsspec URL"),
        (["--to", "FILE"], 2, "is a file; expected a folder"),
        (["--repo", "me/shout"], 1, "pushing to 'me/shout' on http://127.0.0.1:9 failed"),
    ],
    ids=["bad repo", "repo with two slashes", "bad url", "to a file", "hub unreachable"],
)
def test_push_to_a_bad_or_unreachable_target_says_so(
    target: list[str],
    code: int,
    message: str,
    trained: Adapters,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "FILE").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("HF_TOKEN", "hf_" + "y" * 30)
    assert main(["push", "r", *target, *ON_DISK]) == code
    out = " ".join(capsys.readouterr().out.split())
    assert message in out and "Traceback" not in out and "y" * 30 not in out
