"""The composition root: adapter kinds per port, and config -> :class:`Adapters`.

A config names, per port, an adapter kind and its options::

    [adapters]
    default = "noop"          # kind for every port not listed
    metrics = "noop"          # shorthand: kind only
    [adapters.training]
    kind = "noop"
    sensitivity = 50.0        # the kind's options

Kinds are registered in :data:`REGISTRY`; importing an adapter's dependencies happens only
when that kind is built, so listing kinds costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from galley.adapters.settings import settings_from_mapping
from galley.core.adapter_set import PORT_NAMES, Adapters
from galley.core.errors import ConfigError

# Ports in build order: an adapter may use the ones built before it.
BUILD_ORDER: tuple[str, ...] = ("blobs", "hub", "datasets", "metrics", "training", "completer")
# What `galley run sft` uses with no configuration: a real fine-tune of the embedded model.
DEFAULT_KINDS: Mapping[str, str] = {
    "training": "jax",
    "datasets": "hf",
    "blobs": "fsspec",
    "hub": "auto",
    "metrics": "jsonl",
    "completer": "jax",
}


@attrs.frozen
class NoopTrainingOptions:
    sensitivity: float = 100.0
    floor: float = 0.05


@attrs.frozen
class NoopDatasetOptions:
    seed: int = 0
    train_rows: int = 256
    test_rows: int = 32


@attrs.frozen
class NoopCompleterOptions:
    scripted: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class NoOptions:
    pass


@attrs.frozen
class JaxTrainingOptions:
    dtype: str = "float32"
    length_buckets: list[int] = attrs.field(
        factory=lambda: [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    )
    compilation_cache_dir: str | None = None  # keep compiled steps here across processes


@attrs.frozen
class JaxCompleterOptions:
    model: str | None = None  # default base model (hub repo id or directory)
    dtype: str = "float32"
    compilation_cache_dir: str | None = None


@attrs.frozen
class FsspecBlobOptions:
    url: str = "."  # any fsspec URL: a local folder, memory://x, s3://bucket/prefix, ...
    storage_options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class HuggingFaceHubOptions:
    cache_dir: str | None = None  # default: HF_HOME's cache
    offline: bool | None = None  # default: HF_HUB_OFFLINE


@attrs.frozen
class HFDatasetOptions:
    cache_dir: str | None = None
    local_root: str | None = None  # ids found here first; default: galley's embedded datasets


@attrs.frozen
class JsonlMetricsOptions:
    url: str = "runs"  # <url>/<run_id>/metrics.jsonl
    storage_options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class SqliteMetricsOptions:
    path: str = "runs/metrics.db"


@attrs.frozen
class LocalHubOptions:
    root: str | None = None  # default: galley's embedded models


Built = Mapping[str, Any]


@attrs.frozen
class AdapterKind:
    port: str
    kind: str
    description: str
    options: type[Any]
    build: Callable[[Any, Built], Any] = attrs.field(repr=False)


def _noop_training(o: NoopTrainingOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopTrainingClient

    return NoopTrainingClient(built["blobs"], sensitivity=o.sensitivity, floor=o.floor)


def _jax_training(o: JaxTrainingOptions, built: Built) -> Any:
    from galley.adapters.jax import JaxTrainingClient

    return JaxTrainingClient(
        built["hub"],
        built["blobs"],
        dtype=o.dtype,
        length_buckets=o.length_buckets,
        compilation_cache_dir=o.compilation_cache_dir,
    )


def _jax_completer(o: JaxCompleterOptions, built: Built) -> Any:
    from galley.adapters.jax import JaxCompleter

    return JaxCompleter(
        built["hub"],
        built["blobs"],
        model=o.model,
        dtype=o.dtype,
        compilation_cache_dir=o.compilation_cache_dir,
    )


def _fsspec_blobs(o: FsspecBlobOptions, built: Built) -> Any:
    from galley.adapters.fsspec.blobs import FsspecBlobStore

    return FsspecBlobStore(o.url, **o.storage_options)


def _hf_hub(o: HuggingFaceHubOptions, built: Built) -> Any:
    from galley.adapters.hf.hub import HuggingFaceHubClient

    return HuggingFaceHubClient(o.cache_dir, offline=o.offline)


def _hf_datasets(o: HFDatasetOptions, built: Built) -> Any:
    from galley.adapters.embedded import DATASETS
    from galley.adapters.hf.datasets import HFDatasetStore

    return HFDatasetStore(o.cache_dir, local_root=o.local_root or DATASETS)


def _jsonl_metrics(o: JsonlMetricsOptions, built: Built) -> Any:
    from galley.adapters.fsspec.metrics import JsonlMetricsStore

    return JsonlMetricsStore(o.url, **o.storage_options)


def _sqlite_metrics(o: SqliteMetricsOptions, built: Built) -> Any:
    from galley.adapters.sqlite.metrics import SqliteMetricsStore

    return SqliteMetricsStore(o.path)


def _noop_datasets(o: NoopDatasetOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopDatasetStore

    return NoopDatasetStore(seed=o.seed, train_rows=o.train_rows, test_rows=o.test_rows)


def _noop_blobs(o: NoOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopBlobStore

    return NoopBlobStore()


def _noop_hub(o: NoOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopHubClient

    return NoopHubClient()


def _local_hub(o: LocalHubOptions, built: Built) -> Any:
    from galley.adapters.embedded import MODELS
    from galley.adapters.hf.local_hub import LocalDirectoryHub

    return LocalDirectoryHub(o.root or MODELS)


def _auto_hub(o: HuggingFaceHubOptions, built: Built) -> Any:
    from galley.adapters.embedded import MODELS
    from galley.adapters.hf.hub import HuggingFaceHubClient
    from galley.adapters.hf.local_hub import FallbackHub, LocalDirectoryHub

    return FallbackHub(
        LocalDirectoryHub(MODELS), HuggingFaceHubClient(o.cache_dir, offline=o.offline)
    )


def _noop_metrics(o: NoOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopMetricsStore

    return NoopMetricsStore()


def _noop_completer(o: NoopCompleterOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopCompleter

    return NoopCompleter(o.scripted, blobs=built["blobs"])


REGISTRY: dict[str, dict[str, AdapterKind]] = {port: {} for port in PORT_NAMES}


def register(kind: AdapterKind) -> None:
    """Add an adapter kind (your own, too) so configs and the CLI can name it."""
    if kind.port not in REGISTRY:
        raise ConfigError(f"unknown port {kind.port!r}; expected one of {', '.join(PORT_NAMES)}")
    REGISTRY[kind.port][kind.kind] = kind


for _kind in (
    AdapterKind(
        "training",
        "noop",
        "fake one-parameter model: loss falls with steps and LR",
        NoopTrainingOptions,
        _noop_training,
    ),
    AdapterKind(
        "datasets",
        "noop",
        "in-memory datasets; unknown names give a synthetic chat task",
        NoopDatasetOptions,
        _noop_datasets,
    ),
    AdapterKind(
        "training",
        "jax",
        "LoRA or full training of HF decoders with JAX (Flax NNX + Optax)",
        JaxTrainingOptions,
        _jax_training,
    ),
    AdapterKind("blobs", "noop", "in-memory blobs (lost at exit)", NoOptions, _noop_blobs),
    AdapterKind(
        "blobs",
        "fsspec",
        "any fsspec URL (file, memory, s3, gcs...), atomic writes",
        FsspecBlobOptions,
        _fsspec_blobs,
    ),
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
        "datasets",
        "hf",
        "JSONL/JSON/CSV/Parquet files, save_to_disk folders, Hub ids (datasets)",
        HFDatasetOptions,
        _hf_datasets,
    ),
    AdapterKind(
        "metrics",
        "jsonl",
        "one JSON line per step at <url>/<run_id>/metrics.jsonl (fsspec)",
        JsonlMetricsOptions,
        _jsonl_metrics,
    ),
    AdapterKind(
        "metrics",
        "sqlite",
        "an SQLite file (WAL), shared by processes",
        SqliteMetricsOptions,
        _sqlite_metrics,
    ),
    AdapterKind("hub", "noop", "synthetic in-memory model repos", NoOptions, _noop_hub),
    AdapterKind(
        "hub",
        "local",
        "a folder of repos <root>/<org>/<name> (default: embedded)",
        LocalHubOptions,
        _local_hub,
    ),
    AdapterKind("metrics", "noop", "in-memory metric rows", NoOptions, _noop_metrics),
    AdapterKind(
        "completer", "noop", "scripted or echoed answers", NoopCompleterOptions, _noop_completer
    ),
    AdapterKind(
        "completer",
        "jax",
        "KV-cache sampling of HF decoders (+ exported adapters) with JAX",
        JaxCompleterOptions,
        _jax_completer,
    ),
):
    register(_kind)


@attrs.frozen
class AdapterChoice:
    kind: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    retry: Mapping[str, Any] | None = None  # RetryPolicy fields: wrap the adapter in retries
    faults: Mapping[str, Any] | None = None  # Faults fields (+ mid_write_failure_rate)


def parse_adapters_table(
    table: Mapping[str, Any], source: str = "[adapters]"
) -> dict[str, AdapterChoice]:
    """Per-port choices from an ``[adapters]`` table; ports not named get ``default``."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - {*PORT_NAMES, "default"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown port(s) {', '.join(unknown)}; "
            f"valid: default, {', '.join(PORT_NAMES)}"
        )
    default = table.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"{source}.default: expected a kind name, got {default!r:.60}")
    choices = {}
    for port in PORT_NAMES:
        entry = table.get(port, default or DEFAULT_KINDS[port])
        if isinstance(entry, str):
            choices[port] = AdapterChoice(entry)
        elif isinstance(entry, Mapping):
            options = {k: v for k, v in entry.items() if k not in {"kind", "retry", "faults"}}
            kind = entry.get("kind", default or DEFAULT_KINDS[port])
            if not isinstance(kind, str):
                raise ConfigError(f"{source}.{port}.kind: expected a kind name, got {kind!r:.60}")
            choices[port] = AdapterChoice(kind, options, entry.get("retry"), entry.get("faults"))
        else:
            raise ConfigError(
                f"{source}.{port}: expected a kind name or a table, got {entry!r:.60}"
            )
    return choices


@attrs.frozen
class FaultsOptions:
    failure_rate: float = 0.0
    latency_s: float = 0.0
    seed: int = 0
    mid_write_failure_rate: float = 0.0


@attrs.frozen
class RetryOptions:
    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    multiplier: float = 2.0
    max_backoff_s: float = 2.0


def wrap(adapter: Any, port: str, choice: AdapterChoice) -> Any:
    """Faults innermost, retries around them: retries see (and survive) the injected faults."""
    from galley.adapters.helpers.faults import Faults
    from galley.adapters.helpers.resilience import with_faults, with_retries
    from galley.core.engine.retry import RetryPolicy

    if choice.faults is not None:
        f = settings_from_mapping(FaultsOptions, choice.faults, f"[adapters.{port}.faults]")
        faults = Faults(f.failure_rate, f.latency_s, f.seed)
        adapter = with_faults(adapter, faults, port, f.mid_write_failure_rate)
    if choice.retry is not None:
        r = settings_from_mapping(RetryOptions, choice.retry, f"[adapters.{port}.retry]")
        policy = RetryPolicy(r.max_attempts, r.initial_backoff_s, r.multiplier, r.max_backoff_s)
        adapter = with_retries(adapter, policy, port)
    return adapter


def build_adapters(choices: Mapping[str, AdapterChoice], **instances: Any) -> Adapters:
    """Build every port's adapter from its choice; ``instances`` are ready-made adapters
    that take a port's place (and are seen by the adapters built after it)."""
    built: dict[str, Any] = {}
    for port in BUILD_ORDER:
        if port in instances:
            built[port] = instances[port]
            continue
        choice = choices.get(port, AdapterChoice(DEFAULT_KINDS[port]))
        kinds = REGISTRY[port]
        if choice.kind not in kinds:
            raise ConfigError(
                f"[adapters.{port}]: unknown adapter kind {choice.kind!r}; "
                f"available: {', '.join(sorted(kinds))}"
            )
        spec = kinds[choice.kind]
        options = settings_from_mapping(
            spec.options, choice.options, f"[adapters.{port}] ({choice.kind})"
        )
        built[port] = wrap(spec.build(options, built), port, choice)
    return Adapters(**built)
