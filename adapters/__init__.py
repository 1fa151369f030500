"""Adapters: the ports' implementations, and the side that drives galley.

Driving: ``cli`` (the ``galley`` command), and the composition root (``composition``, which
turns adapter choices into :class:`galley.core.Adapters`, with ``settings``, the one strict
reading of settings). Driven, by the technology they wrap: ``noop`` (fakes), ``jax`` (training
and sampling), ``hf`` (datasets, hub, tokenizers, model folders), ``fsspec`` (blobs, JSONL
metrics), ``sqlite`` (metrics). ``helpers`` serves adapter authors; ``embedded`` holds the
shipped model and dataset. tests/test_architecture.py checks which of these may import which.
"""
