"""What the `galley serve` and `tinker` adapter tests (and bench_serve.py) share: the JAX
adapter on the embedded model behind a server, and waiting for a server to answer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from galley.adapters.embedded import MODELS
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.jax import JaxCompleter, JaxTrainingClient
from galley.adapters.noop import noop_adapters
from galley.core import Adapters


def jax_adapters(folder: Path) -> Adapters:
    """The JAX training client and completer on the embedded models, blobs under ``folder``."""
    hub, blobs = LocalDirectoryHub(MODELS), FsspecBlobStore(str(folder))
    return noop_adapters(
        training=JaxTrainingClient(hub, blobs),
        completer=JaxCompleter(hub, blobs),
        hub=hub,
        blobs=blobs,
    )


def wait_until_serving(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {url} within {timeout_s} s")
