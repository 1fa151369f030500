"""The mesh's shape as adapter options (``mesh = {data = 2, fsdp = 2}``): importing it
imports no JAX, so listing adapter kinds stays cheap."""

from __future__ import annotations

from typing import Any

import attrs

from galley.core.errors import ConfigError

AXES = ("data", "fsdp", "tensor")


def _positive(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(f"mesh.{attribute.name}: expected a positive integer, got {value!r}")


@attrs.frozen
class MeshShape:
    """How many devices each mesh axis spans: ``data`` splits batches, ``fsdp`` splits
    weights and optimizer state (and batches), ``tensor`` splits attention heads and MLP
    width. ``data`` left out takes every device that ``fsdp x tensor`` leaves."""

    data: int | None = attrs.field(default=None, validator=_positive)
    fsdp: int = attrs.field(default=1, validator=_positive)
    tensor: int = attrs.field(default=1, validator=_positive)

    def sizes(self, available: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) on ``available`` devices; a ConfigError if they are too few."""
        model = self.fsdp * self.tensor
        data = self.data if self.data is not None else available // model
        if data < 1 or data * model > available:
            given = self.data if self.data is not None else "auto"
            raise ConfigError(
                f"mesh data={given}, fsdp={self.fsdp}, tensor={self.tensor} needs "
                f"{max(data, 1) * model} devices; {available} are available"
            )
        return data, self.fsdp, self.tensor
