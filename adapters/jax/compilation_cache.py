"""JAX's persistent compilation cache, pointed at a directory the user chooses.

A large model's first training step compiles for tens of seconds, autotuning included (figures
in docs/performance.md): every process pays that again unless the compiled programs are kept.
With a cache
directory, a rerun, a resumed job or an evaluation of the same model and bucket loads them
instead. The setting is process-wide (JAX has one cache); the first directory configured in a
process is the one used. The cache holds executable code: keep it where only you can write.
"""

from __future__ import annotations

from pathlib import Path

import jax
import structlog

log = structlog.get_logger(__name__)


def use_compilation_cache(directory: str | Path) -> None:
    """Keep compiled programs in ``directory`` (made if missing) from now on, in this process."""
    wanted = str(Path(directory).expanduser().resolve())
    current: str | None = getattr(jax.config, "jax_compilation_cache_dir")  # noqa: B009 (mypy: untyped)
    if current == wanted:
        return
    if current is not None:
        log.warning("jax.compilation_cache.kept", directory=current, ignored=wanted)
        return
    Path(wanted).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", wanted)  # type: ignore[no-untyped-call]
    log.info("jax.compilation_cache.enabled", directory=wanted)
