"""What every port contract suite shares: a fresh folder per adapter it makes, and the
guarantee each check stands for.

A suite is a class of pytest tests. Subclass it in a test file of your own and define its
``make_...`` hook, which builds your adapter in the temporary folder it is given; every
check then runs against what the hook builds. Each check's docstring is the guarantee it
probes, in the port's words, and when one fails the failure report names it (the galley
pytest plugin adds it: ``galley contract: BlobStore.list: ...``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import pytest


class Contract:
    """Base of the port contract suites; ``port`` names the port a suite checks."""

    port: ClassVar[str] = ""

    @pytest.fixture(autouse=True)
    def _galley_folder(self, tmp_path: Path) -> None:
        self._folder, self._made = tmp_path, 0

    def fresh_folder(self) -> Path:
        """A new empty folder under the test's temporary folder, one per adapter made."""
        self._made += 1
        folder = self._folder / f"adapter-{self._made}"
        folder.mkdir()
        return folder


def guarantee_of(item: Any) -> str | None:
    """``"<port>: <the guarantee>"`` for a contract check, from its docstring; else None."""
    cls = getattr(item, "cls", None)
    function = getattr(item, "function", None)
    if cls is None or function is None or not issubclass(cls, Contract):
        return None
    doc = inspect.getdoc(function)
    if not doc:
        return None
    return f"{cls.port}: {' '.join(doc.split(chr(10) + chr(10))[0].split())}"
