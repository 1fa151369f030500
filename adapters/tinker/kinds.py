"""The ``tinker`` kinds: training and sampling on a Tinker service (hosted, or ``galley
serve``) through the official SDK. The SDK is imported only when one is built."""

from __future__ import annotations

from typing import Any

import attrs

from galley.adapters.composition import AdapterKind, Built


@attrs.frozen
class TinkerTrainingOptions:
    base_url: str | None = None  # default: TINKER_BASE_URL, else the hosted service
    api_key: str | None = None  # default: TINKER_API_KEY (a tml- key); never printed


@attrs.frozen
class TinkerCompleterOptions:
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None  # default base model


def _training(o: TinkerTrainingOptions, built: Built) -> Any:
    from galley.adapters.tinker.training import TinkerTrainingClient

    return TinkerTrainingClient(o.base_url, o.api_key, built["hub"])


def _completer(o: TinkerCompleterOptions, built: Built) -> Any:
    import tinker

    from galley.adapters.tinker.completer import TinkerCompleter

    service = tinker.ServiceClient(base_url=o.base_url, api_key=o.api_key)
    return TinkerCompleter(service, hub=built["hub"], model=o.model, owns_service=True)


KINDS = (
    AdapterKind(
        "training",
        "tinker",
        "LoRA training on a Tinker service (hosted, or galley serve) through the tinker SDK",
        TinkerTrainingOptions,
        _training,
    ),
    AdapterKind(
        "completer",
        "tinker",
        "sampling on a Tinker service through the tinker SDK",
        TinkerCompleterOptions,
        _completer,
    ),
)
