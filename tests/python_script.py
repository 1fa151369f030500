"""Running a Python snippet in a fresh interpreter (for what is per-process: JAX's device
count, its compilation cache) and reading the JSON line it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_python(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``script`` with ``args`` (and ``env`` added to this environment) from the repo root;
    its stderr tail is the failure message when it exits non-zero."""
    return run_python_together(script, [list(args)], env=env)[0]


def run_python_together(
    script: str, runs: list[list[str]], *, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """``run_python`` once per argument list in ``runs``, the processes side by side (JAX
    compiles on one core: two processes use two)."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for args in runs
    ]
    results = []
    for process in started:
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results
