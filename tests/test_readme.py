"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "step 30: loss" in out and "galley://" in out


def shell_commands() -> list[str]:
    """Every command line of the README's bash blocks: continuations joined, comments and
    `&&` chains split, placeholders filled."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #", 1)[0].strip()
            commands += [part.strip() for part in command.split("&&") if part.strip()]
    return [c.replace("<run_id>", "r").replace("<workflow>", "sft") for c in commands]


def test_every_readme_command_line_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `galley` line parses (and a `galley run` line's settings load); each file a line
    names exists. A README that drifts from the CLI fails here."""
    import sys

    monkeypatch.chdir(tmp_path)  # where the README's reward module would be
    (tmp_path / "my_rewards.py").write_text("def shouted(example, completion):\n    return 0.0\n")
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    try:
        checked = check_commands(README.parent)
    finally:
        sys.modules.pop("my_rewards", None)  # this stub is not the docs' module of that name
    assert checked >= 20


def check_commands(root: Path) -> int:
    import shlex

    from galley.adapters.cli import parser
    from galley.adapters.cli.run_config import load_run_config

    checked = 0
    for command in shell_commands():
        words = shlex.split(command)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
            words = words[1:]
        tool, args = words[0], words[1:]
        if tool.endswith("galley"):
            parsed = parser().parse_args(args)
            if args[0] == "run":
                load_run_config(parsed.workflow, None, parsed.set, parsed.adapters)
        elif tool.endswith("python") and args[:2] == ["-m", "pytest"]:
            assert all((root / a).exists() for a in args[2:] if not a.startswith("-")), command
        elif tool.endswith("python"):
            assert args[0] == "train.py" or (root / args[0]).is_file(), command
        else:
            assert tool in {"python3", ".venv/bin/pip"}, command
        checked += 1
    return checked


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    install, tests = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)[
        0
    ].splitlines()
    assert install.startswith("python3 -m venv .venv && .venv/bin/pip install -e . &&")
    assert "'.[test]'" not in install  # the default job needs no test extra
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests


def test_the_python_example_prints_only_its_own_lines(tmp_path: Path) -> None:
    """Run as a script, as a user runs it: galley's events stay quiet (structlog as it came
    shows warnings only), so the output is the example's own prints."""
    import subprocess
    import sys

    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[:1]
    (tmp_path / "example.py").write_text(block)
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"step {i}" for i in range(1, 31)]
    assert len(lines) == 31 and done.stderr == ""
