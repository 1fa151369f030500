"""Adapter plugins: an installed package that declares kinds in the ``galley.adapters``
entry-point group is listed by `galley adapters` and selected by name; one that fails is named
and left out without breaking the others; code that is not installed is named by its path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example-plugin"  # the package docs/adapters.md walks through
BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "galley-broken-plugin"
version = "0.1.0"

[tool.setuptools]
packages = ["galley_broken_plugin"]

[project.entry-points."galley.adapters"]
broken = "galley_broken_plugin:KINDS"
"""


def galley(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter that sees the packages under ``site``."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from galley.adapters.cli import main; sys.exit(main(sys.argv[1:]))",
            *args,
        ],
        env={**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin and a broken one, installed into a folder of their own (the test
    environment is left as it was)."""
    root = tmp_path_factory.mktemp("plugins")
    shutil.copytree(EXAMPLE, root / "csv", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    broken = root / "broken"
    (broken / "galley_broken_plugin").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "galley_broken_plugin" / "__init__.py").write_text(
        "raise RuntimeError('this plugin is broken')\n"
    )
    target = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(target), str(root / "csv"), str(broken)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_an_installed_plugin_is_listed_and_a_broken_one_named(site: Path, tmp_path: Path) -> None:
    done = galley(site, "adapters", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "metrics │ csv │ folder │ galley-csv-metrics 0.1.0 │ one CSV file per run" in out
    assert "noop" in out and "jax" in out  # galley's own kinds are all still there
    assert (
        "left out: entry point 'broken' of galley-broken-plugin 0.1.0 "
        "(galley_broken_plugin:KINDS): this plugin is broken" in out
    )


def test_a_run_uses_an_installed_plugin_by_name(site: Path, tmp_path: Path) -> None:
    sets = ["--set", "adapters.metrics=csv", "--set", f"adapters.metrics.folder={tmp_path}/m"]
    done = galley(
        site,
        "run",
        "sft",
        "--adapters",
        "noop",
        *sets,
        "--set",
        "max_steps=3",
        "--set",
        "run_id=p",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = (tmp_path / "m" / "p.csv").read_text().splitlines()
    assert rows[0] == "run_id,stream,step,time,name,value"
    assert {r.split(",")[2] for r in rows[1:] if ",train," in r and ",loss," in r} == {
        "1",
        "2",
        "3",
    }


def test_code_that_is_not_installed_is_named_by_its_path(tmp_path: Path) -> None:
    kind = "adapters.metrics=galley_csv_metrics:CsvMetricsStore"  # a factory: called with options
    sets = ["--set", kind, "--set", f"adapters.metrics.folder={tmp_path}/m", "--set", "max_steps=2"]
    done = galley(
        EXAMPLE, "run", "sft", "--adapters", "noop", *sets, "--set", "run_id=q", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "m" / "q.csv").is_file()
    missing = galley(
        EXAMPLE,
        "run",
        "sft",
        "--adapters",
        "noop",
        "--set",
        "adapters.metrics=no_such_module:Store",
        cwd=tmp_path,
    )
    assert missing.returncode == 2
    assert "kind 'no_such_module:Store' cannot be imported: No module named 'no_such_module'" in (
        " ".join(missing.stdout.split())
    )


def test_a_kind_registered_from_python_is_listed_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import attrs

    from galley.adapters.cli import main
    from galley.adapters.composition import AdapterKind, register
    from galley.adapters.noop import NoopMetricsStore

    stores: list[NoopMetricsStore] = []

    @attrs.frozen
    class Options:
        label: str = "x"

    def build(options: Options, built: object) -> NoopMetricsStore:
        stores.append(NoopMetricsStore())
        return stores[-1]

    register(AdapterKind("metrics", "in-memory-for-a-test", "a test's store", Options, build))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    assert main(["adapters"]) == 0
    listed = " ".join(capsys.readouterr().out.split())
    assert "in-memory-for-a-test │ label │ registered in Python" in listed
    args = ["run", "sft", "--adapters", "noop", "--set", "max_steps=2", "--set", "run_id=r"]
    assert main([*args, "--set", "adapters.metrics=in-memory-for-a-test"]) == 0
    assert [r.step for r in stores[0].read("r") if r.stream == "train"] == [1, 2]
