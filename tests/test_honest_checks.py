"""Checks on the checks: every test can fail, and every test or file the docs cite exists."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where test functions live: the suite, and the contract suites users subclass.
TEST_SOURCES = [*sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "adapters").rglob("*.py"))]
# Calls that check something although they are not ``assert``: pytest's context managers, the
# runners of other programs whose own checks fail the test, and ``suppress(GalleyError)`` in a
# fuzz test, where any other exception fails it.
CHECKING_CALLS = {"raises", "warns", "fail", "run_python", "check_call", "check_output", "suppress"}


def _called_names(node: ast.AST) -> Iterator[str]:
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            if isinstance(func, ast.Name):
                yield func.id
            elif isinstance(func, ast.Attribute):
                yield func.attr


def _checks_directly(node: ast.AST) -> bool:
    if any(isinstance(n, ast.Assert) for n in ast.walk(node)):
        return True
    return any(
        name in CHECKING_CALLS or name.startswith(("assert", "check_")) or name.endswith("_check")
        for name in _called_names(node)
    )


def _functions() -> dict[str, list[ast.FunctionDef]]:
    """Every function and method of the test sources, by name (names repeat across files)."""
    found: dict[str, list[ast.FunctionDef]] = {}
    for path in TEST_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.FunctionDef):
                found.setdefault(node.name, []).append(node)
    return found


def checking_helpers(functions: dict[str, list[ast.FunctionDef]]) -> set[str]:
    """Names of helpers that check something, directly or through another such helper."""
    checking = {name for name, defs in functions.items() if any(map(_checks_directly, defs))}
    while True:
        more = {
            name
            for name, defs in functions.items()
            if name not in checking
            and any(set(_called_names(d)) & checking for d in defs)
            and not name.startswith("test_")
        }
        if not more:
            return checking
        checking |= more


def checkless_tests() -> list[str]:
    functions = _functions()
    helpers = checking_helpers(functions) - {n for n in functions if n.startswith("test_")}
    empty = []
    for path in TEST_SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            if _checks_directly(node) or set(_called_names(node)) & helpers:
                continue
            empty.append(f"{path.relative_to(ROOT)}::{node.name} (line {node.lineno})")
    return empty


def test_every_test_function_checks_something() -> None:
    """A test with no assert, no pytest.raises and no checking helper cannot fail on a wrong
    answer, only on a crash."""
    assert checkless_tests() == []


def test_the_checker_flags_a_test_without_a_check(tmp_path: Path) -> None:
    tree = ast.parse("def test_runs():\n    x = 1 + 1\n\ndef test_checks():\n    assert 2 == 2\n")
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [_checks_directly(t) for t in tests] == [False, True]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# ``tests/x.py::name`` and ``tests/x.py``, ``tests/benchmarks/x.py`` ... as the docs cite them
CITED_TEST = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")
CITED_PATH = re.compile(
    r"`((?:core|ports|adapters|workflows|docs|tests|\.ci)/[\w./-]+?\.(?:py|md|toml|sh|json))`"
)


def cited() -> Iterator[tuple[str, str, str | None]]:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in CITED_TEST.finditer(text):
            yield doc.name, match.group(1), match.group(2)
        for match in CITED_PATH.finditer(text):
            yield doc.name, match.group(1), None
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for match in CITED_TEST.finditer(pyproject):
        yield "pyproject.toml", match.group(1), match.group(2)


def test_every_test_and_file_the_docs_cite_exists() -> None:
    missing = []
    for doc, path, name in cited():
        target = ROOT / path
        if Path(path).name.startswith("test_my_"):  # a user's own file, in an example
            continue
        if not target.is_file():
            missing.append(f"{doc}: {path}")
        elif name is not None and not re.search(
            rf"^\s*(?:async )?(?:def|class) {name}\b", target.read_text(encoding="utf-8"), re.M
        ):
            missing.append(f"{doc}: {path}::{name}")
    assert missing == []
    assert sum(1 for _ in cited()) > 20  # the patterns find what the docs cite


def test_every_test_name_the_docs_cite_is_defined() -> None:
    """A bare ``test_name`` in the docs is a test of the suite or of a contract suite (the
    docs' examples of a user's own tests are named ``test_my_...``)."""
    defined = set()
    for path in TEST_SOURCES:
        defined |= set(re.findall(r"def (test_\w+)", path.read_text(encoding="utf-8")))
    files = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    missing = [
        f"{doc.name}: {name}"
        for doc in DOCS
        for name in re.findall(r"\b(test_\w+)", doc.read_text(encoding="utf-8"))
        if name not in defined | files and not name.startswith("test_my_")
    ]
    assert missing == []


def test_the_count_of_bad_inputs_in_the_docs_is_the_suites() -> None:
    from tests.test_bad_inputs import CASES

    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    (count,) = re.findall(r"`tests/test_bad_inputs.py`: (\d+) bad inputs", text)
    assert int(count) == len(CASES)
