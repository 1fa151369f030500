"""``galley serve``: the Tinker API over galley's ports, for the official ``tinker`` SDK.

A driving adapter. ``TinkerService`` (``service.py``) does what each endpoint asks with the
configured TrainingClient, Completer, BlobStore and HubClient (its ``RunCatalog``,
``catalog.py``, lists and deletes runs and checkpoints); ``create_app`` (``app.py``)
puts it behind HTTP with API keys per tenant and bounded bodies and queues; ``wire.py`` reads
and writes the SDK's protobuf and JSON messages. Needs the ``serve`` extra (FastAPI, uvicorn
and ``tinker`` for its message types)."""

from galley.adapters.serve.app import create_app
from galley.adapters.serve.keys import KeyRing, key_ring
from galley.adapters.serve.server import BackgroundServer, serve_forever
from galley.adapters.serve.service import TinkerService
from galley.adapters.serve.tenancy import ServeLimits

__all__ = [
    "BackgroundServer",
    "KeyRing",
    "ServeLimits",
    "TinkerService",
    "create_app",
    "key_ring",
    "serve_forever",
]
