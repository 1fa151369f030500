"""ruff and mypy stay clean: run as part of the suite so CI enforces it.

mypy needs to see the folders as the ``galley.*`` packages they install as; a link farm
(galley/core -> core, ...) in a temporary directory gives it that view of the working tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean(tmp_path: Path) -> None:
    galley = tmp_path / "galley"
    galley.mkdir()
    for layer in ("core", "ports", "adapters", "workflows"):
        (galley / layer).symlink_to(ROOT / layer, target_is_directory=True)
    env = {**os.environ, "MYPYPATH": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "-p",
            "galley.core",
            "-p",
            "galley.ports",
            "-p",
            "galley.adapters",
            "-p",
            "galley.workflows",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
