"""Adapters: implementations of the ports (noop fakes today; JAX, datasets, fsspec... next),
plus the driving side: the composition root (config -> adapters) and the ``galley`` CLI."""
