"""``Adapters``: the six port implementations a workflow runs with, filled in at composition."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from galley.core.errors import ValidationError

if TYPE_CHECKING:
    from galley.ports import (
        BlobStore,
        Completer,
        DatasetStore,
        HubClient,
        MetricsSink,
        TrainingClient,
    )


def _implements(port_name: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        from galley.ports import PORTS  # ports import core; look them up only when checking

        port = PORTS[port_name]
        missing = [
            name for name in dir(port) if not name.startswith("_") and not hasattr(value, name)
        ]
        if missing:
            raise ValidationError(
                f"Adapters.{attribute.name}",
                f"{type(value).__name__} does not implement the {port.__name__} port: "
                f"missing {', '.join(sorted(missing))}",
            )

    return check


@attrs.frozen
class Adapters:
    """One adapter per port. Any object with the port's methods fits (no base class needed).

    ``adapters.replace(metrics=MyStore())`` swaps one and keeps the rest.
    """

    training: TrainingClient = attrs.field(validator=_implements("training"))
    datasets: DatasetStore = attrs.field(validator=_implements("datasets"))
    blobs: BlobStore = attrs.field(validator=_implements("blobs"))
    hub: HubClient = attrs.field(validator=_implements("hub"))
    metrics: MetricsSink = attrs.field(validator=_implements("metrics"))
    completer: Completer = attrs.field(validator=_implements("completer"))

    def replace(self, **overrides: Any) -> Adapters:
        unknown = sorted(set(overrides) - set(attrs.fields_dict(Adapters)))
        if unknown:
            raise ValidationError(
                "Adapters",
                f"unknown port(s) {', '.join(unknown)}; expected {', '.join(PORT_NAMES)}",
            )
        return attrs.evolve(self, **overrides)


PORT_NAMES: tuple[str, ...] = ("training", "datasets", "blobs", "hub", "metrics", "completer")
