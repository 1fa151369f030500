"""The JAX adapter's training step for a session and a batch, lowered but not run: what
compile-time and memory checks look at; and the datums and export files the JAX tests
share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from galley.adapters.jax.steps import forward_backward_step
from galley.adapters.jax.training import JaxTrainingSession
from galley.core import Datum
from galley.ports import BlobStore


def sequences(rows: int, length: int) -> list[Datum]:
    """``rows`` distinct datums of ``length`` tokens, every position trained: the batches the
    memory checks compile."""
    return [
        Datum.from_tokens([(3 + i + j) % 200 for j in range(length)], [1.0] * length)
        for i in range(rows)
    ]


def texts(tok: Any, samples: list[str]) -> list[Datum]:
    """Each sample after a BOS token, every token after the first trained."""
    out = []
    for t in samples:
        ids = [tok.bos_token_id, *tok.encode(t)]
        out.append(Datum.from_tokens(ids, [0.0] + [1.0] * (len(ids) - 1)))
    return out


def write_blobs(blobs: BlobStore, prefix: str, folder: Path) -> Path:
    """The files under ``prefix`` (an export), copied into ``folder`` for HF to load."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in blobs.list(prefix):
        (folder / key.rsplit("/", 1)[-1]).write_bytes(blobs.read(key))
    return folder


def lowered_step(session: JaxTrainingSession, data: Sequence[Datum]) -> Any:
    """``forward_backward_step`` (cross-entropy) on ``data``, padded as the session pads."""
    request, (batch, *more) = session._prepare(data, "cross_entropy", None)
    assert not more, "a lowered step is one pass: no micro-batches"
    return forward_backward_step.lower(
        session._graphdef,
        session._trainable,
        session._frozen,
        session._grads,
        session._device_batch(batch),
        request.loss_fn,
        jnp.asarray([0.8, 1.2], jnp.float32),
        session._pins,
        session._client.logits_chunk,
    )
