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
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
