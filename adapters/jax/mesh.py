"""The mesh's shape and a distributed run's processes as adapter options (``mesh = {data =
2, fsdp = 2}``, ``distributed = {coordinator = "host:port", ...}``): importing them imports no
JAX, so listing adapter kinds stays cheap."""

from __future__ import annotations

from collections.abc import Mapping
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


def as_mesh_shape(mesh: MeshShape | Mapping[str, Any] | None) -> MeshShape:
    """A mesh as given in Python: a MeshShape, a mapping of its sizes (``{"fsdp": 4}``, as
    TOML gives it), or None (every device on the data axis). Anything else is refused."""
    if mesh is None:
        return MeshShape()
    if isinstance(mesh, MeshShape):
        return mesh
    if isinstance(mesh, Mapping):
        unknown = sorted(set(mesh) - {"data", "fsdp", "tensor"})
        if unknown:
            raise ConfigError(f"mesh: unknown axis {', '.join(unknown)}; axes: data, fsdp, tensor")
        return MeshShape(**mesh)
    raise ConfigError(
        f"mesh: expected a MeshShape or a mapping like {{'fsdp': 4}}, got {type(mesh).__name__}"
    )


def _at_least(low: int) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and (type(value) is not int or value < low):
            raise ConfigError(
                f"distributed.{attribute.name}: expected an integer of at least {low}, "
                f"got {value!r}"
            )

    return check


@attrs.frozen
class Distributed:
    """One process of a run of several (``jax.distributed``): every process runs the same
    workflow with the same settings but its own ``process_id``. Fields left out are read
    from the environment as ``jax.distributed.initialize`` reads it (its variables, or a
    cluster's: SLURM, Kubernetes, TPU pods)."""

    coordinator: str | None = None  # "host:port" where process 0 listens
    num_processes: int | None = attrs.field(default=None, validator=_at_least(1))
    process_id: int | None = attrs.field(default=None, validator=_at_least(0))
    # A process not heard from for this long has died: every other process ends too.
    timeout_s: int = attrs.field(default=100, validator=_at_least(1))
    start_timeout_s: int = attrs.field(default=300, validator=_at_least(1))  # all must join
