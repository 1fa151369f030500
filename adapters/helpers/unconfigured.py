"""Adapters that fail closed: a port nobody configured, refusing every call with a clear error.

Different from the noop adapters on purpose: a noop adapter is a fake that succeeds, for tests;
an unconfigured one makes a forgotten adapter loud instead of silently faking results.
"""

from __future__ import annotations

from typing import Any, NoReturn

from galley.core.errors import GalleyError


class NotConfiguredError(GalleyError):
    """A workflow used a port that has no adapter configured."""


class Unconfigured:
    """Stands in for any port; every method raises :class:`NotConfiguredError`."""

    def __init__(self, port: str) -> None:
        self.port = port

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def refuse(*args: Any, **kwargs: Any) -> NoReturn:
            raise NotConfiguredError(
                f"no adapter is configured for the {self.port!r} port (called {name}); "
                f"set [adapters.{self.port}] in the config or pass one in Adapters(...)"
            )

        return refuse

    def __repr__(self) -> str:
        return f"Unconfigured({self.port!r})"
