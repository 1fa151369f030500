"""The Hugging Face kinds (datasets, hubs), for configs and the CLI."""

from __future__ import annotations

from typing import Any

import attrs

from galley.adapters.composition import AdapterKind, Built


@attrs.frozen
class HuggingFaceHubOptions:
    cache_dir: str | None = None  # default: HF_HOME's cache
    offline: bool | None = None  # default: HF_HUB_OFFLINE


@attrs.frozen
class HFDatasetOptions:
    cache_dir: str | None = None
    local_root: str | None = None  # ids found here first; default: galley's embedded datasets


@attrs.frozen
class LocalHubOptions:
    root: str | None = None  # default: galley's embedded models


def _hf_hub(o: HuggingFaceHubOptions, built: Built) -> Any:
    from galley.adapters.hf.hub import HuggingFaceHubClient

    return HuggingFaceHubClient(o.cache_dir, offline=o.offline)


def _auto_hub(o: HuggingFaceHubOptions, built: Built) -> Any:
    from galley.adapters.embedded import MODELS
    from galley.adapters.hf.hub import HuggingFaceHubClient
    from galley.adapters.hf.local_hub import FallbackHub, LocalDirectoryHub

    return FallbackHub(
        LocalDirectoryHub(MODELS), HuggingFaceHubClient(o.cache_dir, offline=o.offline)
    )


def _local_hub(o: LocalHubOptions, built: Built) -> Any:
    from galley.adapters.embedded import MODELS
    from galley.adapters.hf.local_hub import LocalDirectoryHub

    return LocalDirectoryHub(o.root or MODELS)


def _datasets(o: HFDatasetOptions, built: Built) -> Any:
    from galley.adapters.embedded import DATASETS
    from galley.adapters.hf.datasets import HFDatasetStore

    return HFDatasetStore(o.cache_dir, local_root=o.local_root or DATASETS)


KINDS = (
    AdapterKind(
        "hub",
        "auto",
        "galley's embedded models, then the Hugging Face Hub",
        HuggingFaceHubOptions,
        _auto_hub,
    ),
    AdapterKind(
        "hub",
        "huggingface",
        "the Hugging Face Hub via huggingface_hub (HF_HOME, HF_HUB_OFFLINE)",
        HuggingFaceHubOptions,
        _hf_hub,
    ),
    AdapterKind(
        "hub",
        "local",
        "a folder of repos <root>/<org>/<name> (default: embedded)",
        LocalHubOptions,
        _local_hub,
    ),
    AdapterKind(
        "datasets",
        "hf",
        "JSONL/JSON/CSV/Parquet files, save_to_disk folders, Hub ids (datasets)",
        HFDatasetOptions,
        _datasets,
    ),
)
