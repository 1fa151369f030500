"""The ``tinker`` adapters: galley's TrainingClient and Completer over the official ``tinker``
SDK, so any workflow runs on the hosted Tinker service or on ``galley serve`` by switching
adapter kinds (``--set adapters.training=tinker --set adapters.completer=tinker``). Needs the
``serve`` extra (it installs the SDK)."""

from galley.adapters.tinker.completer import TinkerCompleter
from galley.adapters.tinker.training import TinkerTrainingClient, TinkerTrainingSession

__all__ = ["TinkerCompleter", "TinkerTrainingClient", "TinkerTrainingSession"]
