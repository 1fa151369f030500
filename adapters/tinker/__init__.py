"""The ``tinker`` adapters: galley's TrainingClient and Completer over the official ``tinker``
SDK, so any workflow runs on the hosted Tinker service or on ``galley serve`` by switching
adapter kinds (``--set adapters.training=tinker --set adapters.completer=tinker``). Needs the
``serve`` extra (it installs the SDK). Importing this package imports no SDK: the classes
load when first named, so listing adapter kinds (``kinds.py``) stays cheap."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from galley.adapters.tinker.completer import TinkerCompleter
    from galley.adapters.tinker.training import TinkerTrainingClient, TinkerTrainingSession

_WHERE = {
    "TinkerCompleter": "galley.adapters.tinker.completer",
    "TinkerTrainingClient": "galley.adapters.tinker.training",
    "TinkerTrainingSession": "galley.adapters.tinker.training",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = ["TinkerCompleter", "TinkerTrainingClient", "TinkerTrainingSession"]
