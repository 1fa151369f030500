"""The composition root: adapter kinds per port, and config -> :class:`Adapters`.

A config names, per port, an adapter kind and its options::

    [adapters]
    default = "noop"          # kind for every port not listed
    metrics = "noop"          # shorthand: kind only
    [adapters.training]
    kind = "noop"
    sensitivity = 50.0        # the kind's options

Each adapter package declares its kinds next to its code (``noop/kinds.py``, ``jax/kinds.py``,
...) as a ``KINDS`` tuple of :class:`AdapterKind`, published through the ``galley.adapters``
entry-point group: galley's own kinds and installed plugins are found the same way, when the
registry is first read. A kind's module imports only what describes it (its options class);
what the adapter needs (JAX, datasets, fsspec) is imported when the kind is built, so listing
kinds, or a noop run, imports none of it. A kind may also be named by where it lives,
``"my_pkg.my_module:NAME"``, with NAME an :class:`AdapterKind` or a factory called with the
options as keyword arguments.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import structlog

from galley.adapters.settings import settings_from_mapping
from galley.adapters.wrappers.fanout import fan_out
from galley.adapters.wrappers.followers import for_process
from galley.core.adapter_set import PORT_NAMES, Adapters
from galley.core.errors import ConfigError, GalleyError

ENTRY_POINT_GROUP = "galley.adapters"
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

Built = Mapping[str, Any]


@attrs.frozen
class NoOptions:
    pass


@attrs.frozen
class AdapterKind:
    """A kind of adapter for one port: its name, its options (an attrs class, filled from the
    config strictly) and how to build it from them and the adapters built before it.
    ``origin`` says where it comes from (galley, or a plugin package)."""

    port: str
    kind: str
    description: str
    options: type[Any] | None  # None: options go to ``build`` as a plain dict, unchecked
    build: Callable[[Any, Built], Any] = attrs.field(repr=False)
    origin: str = "galley"


class Registry:
    """Adapter kinds by port and name: entry points first (galley's own before plugins'),
    then kinds registered from Python (which replace any of the same name). A plugin that
    fails to load, or names a kind that is taken, is left out with a warning (``problems``);
    the others still load."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._kinds: dict[str, dict[str, AdapterKind]] | None = None
        self._registered: list[AdapterKind] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def kinds(self) -> Mapping[str, Mapping[str, AdapterKind]]:
        with self._lock:
            if self._kinds is None:
                self._kinds = {port: {} for port in PORT_NAMES}
                for ep in sorted(entry_points(group=self.group), key=_galley_first):
                    self._load(ep)
                for kind in self._registered:
                    self._kinds[kind.port][kind.kind] = kind
            return self._kinds

    def register(self, kind: AdapterKind) -> None:
        """Add ``kind``; it replaces a kind of the same port and name (asked for by name)."""
        if kind.port not in PORT_NAMES:
            raise ConfigError(
                f"unknown port {kind.port!r}; expected one of {', '.join(PORT_NAMES)}"
            )
        if kind.origin == "galley":
            kind = attrs.evolve(kind, origin="registered in Python")
        with self._lock:
            self._registered.append(kind)
            if self._kinds is not None:
                self._kinds[kind.port][kind.kind] = kind

    def resolve(self, port: str, name: str) -> AdapterKind:
        """The kind ``name`` of ``port``: a registered name, or ``"module:attribute"``."""
        if ":" in name:
            return _imported_kind(port, name)
        kinds = self.kinds()[port]
        if name not in kinds:
            raise ConfigError(
                f"[adapters.{port}]: unknown adapter kind {name!r}; "
                f"available: {', '.join(sorted(kinds))}" + self._problems_note()
            )
        return kinds[name]

    def _problems_note(self) -> str:
        return f" (left out: {'; '.join(self.problems)})" if self.problems else ""

    def _load(self, ep: EntryPoint) -> None:
        dist = ep.dist
        package = f"{dist.name} {dist.version}" if dist is not None else ep.value
        origin = "galley" if dist is not None and dist.name == "galley" else package
        try:
            loaded = ep.load()
            kinds = [loaded] if isinstance(loaded, AdapterKind) else list(loaded)
            if not all(isinstance(k, AdapterKind) for k in kinds):
                raise TypeError("expected an AdapterKind or an iterable of them")
        except Exception as e:  # a plugin's bug must not take the others down
            self._problem(f"entry point {ep.name!r} of {package} ({ep.value}): {e}")
            return
        for kind in kinds:
            self._add(attrs.evolve(kind, origin=origin), f"entry point {ep.name!r} of {package}")

    def _add(self, kind: AdapterKind, where: str) -> None:
        assert self._kinds is not None
        if kind.port not in self._kinds:
            self._problem(f"{where}: kind {kind.kind!r} names an unknown port {kind.port!r}")
        elif kind.kind in self._kinds[kind.port] and kind.origin != "galley":
            taken = self._kinds[kind.port][kind.kind].origin
            self._problem(f"{where}: {kind.port} kind {kind.kind!r} is taken (by {taken})")
        else:
            self._kinds[kind.port][kind.kind] = kind

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        structlog.get_logger("galley").warning("adapters.plugin_left_out", problem=text)


def _galley_first(ep: EntryPoint) -> tuple[bool, str]:
    return (ep.dist is None or ep.dist.name != "galley", ep.name)


def _imported_kind(port: str, name: str) -> AdapterKind:
    module_name, _, attribute = name.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"[adapters.{port}]: kind {name!r} cannot be imported: {e}") from None
    if isinstance(found, AdapterKind):
        if found.port != port:
            raise ConfigError(f"[adapters.{port}]: {name!r} is a {found.port} kind, not {port}")
        return attrs.evolve(found, origin=module_name)
    if not callable(found):
        raise ConfigError(
            f"[adapters.{port}]: {name!r} is neither an AdapterKind nor a factory to call"
        )
    return AdapterKind(
        port, name, f"factory {name}", None, lambda options, built: found(**options), module_name
    )


REGISTRY = Registry()


def register(kind: AdapterKind) -> None:
    """Add an adapter kind (your own, too) so configs and the CLI can name it."""
    REGISTRY.register(kind)


def adapter_kinds() -> Mapping[str, Mapping[str, AdapterKind]]:
    """Every kind by port: galley's, installed plugins', and those registered from Python."""
    return REGISTRY.kinds()


@attrs.frozen
class AdapterChoice:
    """A port's adapter as configured. ``parts`` (metrics only) are several adapters that
    take every row: ``kind`` is then their kinds joined by '+'."""

    kind: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    retry: Mapping[str, Any] | None = None  # RetryPolicy fields: wrap the adapter in retries
    faults: Mapping[str, Any] | None = None  # Faults fields (+ mid_write_failure_rate)
    parts: tuple[AdapterChoice, ...] = ()
    cache: bool = False  # completer, training: answer repeated requests from the BlobStore
    events: bool = False  # every call as structlog events (start, end with duration, error)


SEVERAL = ("metrics",)  # ports that take a list of kinds: every row goes to each


def _choice(entry: Any, default: str, where: str) -> AdapterChoice:
    """One kind: a name, or a table with ``kind`` (else ``default``) and its options."""
    if isinstance(entry, str):
        return AdapterChoice(entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a kind name or a table, got {entry!r:.60}")
    wrappers = {"kind", "retry", "faults", "cache", "events"}
    options = {k: v for k, v in entry.items() if k not in wrappers}
    kind = entry.get("kind", default)
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.kind: expected a kind name, got {kind!r:.60}")
    switches = {name: entry.get(name, False) for name in ("cache", "events")}
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r:.60}")
    return AdapterChoice(kind, options, entry.get("retry"), entry.get("faults"), **switches)


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
        fallback = default or DEFAULT_KINDS[port]
        entry = table.get(port, fallback)
        if isinstance(entry, list):
            if port not in SEVERAL or not entry:
                raise ConfigError(
                    f"{source}.{port}: a list of kinds is for {', '.join(SEVERAL)} only, and "
                    "needs one kind or more"
                )
            parts = tuple(
                _choice(e, fallback, f"{source}.{port}[{i}]") for i, e in enumerate(entry)
            )
            twice = sorted({p.kind for p in parts if parts.count(p) > 1})
            if twice:  # the same sink twice would record every row twice
                raise ConfigError(
                    f"{source}.{port}: {', '.join(twice)} is listed twice with the same options"
                )
            choices[port] = AdapterChoice("+".join(p.kind for p in parts), parts=parts)
        else:
            choices[port] = _choice(entry, fallback, f"{source}.{port}")
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
    from galley.adapters.wrappers.resilience import with_faults, with_retries
    from galley.core.retry import RetryPolicy

    if choice.faults is not None:
        f = settings_from_mapping(FaultsOptions, choice.faults, f"[adapters.{port}.faults]")
        faults = Faults(f.failure_rate, f.latency_s, f.seed)
        adapter = with_faults(adapter, faults, port, f.mid_write_failure_rate)
    if choice.retry is not None:
        r = settings_from_mapping(RetryOptions, choice.retry, f"[adapters.{port}.retry]")
        policy = RetryPolicy(r.max_attempts, r.initial_backoff_s, r.multiplier, r.max_backoff_s)
        adapter = with_retries(adapter, policy, port)
    if choice.events:  # outermost: a call's events span its retries
        from galley.adapters.wrappers.events import log_call, with_events

        adapter = with_events(adapter, port, log_call())
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
        if choice.parts:
            sinks = [(part.kind, build_one(port, part, built)) for part in choice.parts]
            built[port] = fan_out(sinks)
        else:
            built[port] = build_one(port, choice, built)
    return for_process(Adapters(**built), process_role()[0])


def process_role() -> tuple[int, int]:
    """(this process's index, the number of processes) in a run of several processes that
    an adapter joined (``jax.distributed``); (0, 1) otherwise."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return 0, 1
    return int(jax.process_index()), int(jax.process_count())


def build_one(port: str, choice: AdapterChoice, built: Built) -> Any:
    """The adapter ``choice`` names for ``port``, given the adapters built before it."""
    spec = REGISTRY.resolve(port, choice.kind)
    options = (
        settings_from_mapping(spec.options, choice.options, f"[adapters.{port}] ({choice.kind})")
        if spec.options is not None
        else dict(choice.options)
    )
    try:
        adapter = spec.build(options, built)
    except GalleyError:
        raise
    except Exception as e:  # a plugin's (or a library's) own error type
        raise ConfigError(
            f"[adapters.{port}]: the {choice.kind!r} adapter ({spec.origin}) could not be "
            f"built: {type(e).__name__}: {e}"
        ) from e
    if choice.cache:
        from galley.adapters.wrappers.cache import CachingCompleter, CachingTrainingClient

        caching = {"completer": CachingCompleter, "training": CachingTrainingClient}
        if port not in caching:
            raise ConfigError(
                f"[adapters.{port}].cache: only the completer's answers and the training "
                "client's forward passes are cached"
            )
        adapter = caching[port](adapter, built["blobs"])
    return wrap(adapter, port, choice)
