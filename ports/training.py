"""TrainingClient: where gradients are computed and weights live (Tinker semantics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from galley.core.domain.tokenizer import Tokenizer
from galley.core.domain.types import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardOutput,
    ModelInfo,
    OptimStepResult,
    SessionConfig,
)
from galley.ports.completer import Completer


@runtime_checkable
class TrainingSession(Protocol):
    """One model being trained. Every request returns a ``Future`` at once.

    Ordering: requests of one session execute in the order they were submitted, so a caller may
    submit ``forward_backward`` and ``optim_step`` for several batches before waiting on any;
    a ``forward`` submitted after an ``optim_step`` sees the updated weights.
    Errors: invalid arguments raise at submission (galley's ``ValidationError``); failures
    while executing are set on the future. A transient failure (worth retrying) is a
    ``TransientError``; after a failed request the session must still accept new requests.
    """

    @property
    def session_id(self) -> str:
        """Unique among the client's sessions; stable for the session's life."""
        ...

    @property
    def tokenizer(self) -> Tokenizer:
        """The base model's tokenizer: what ``Datum`` token ids mean."""
        ...

    @property
    def model_info(self) -> ModelInfo:
        """Name, vocabulary size, context length and parameter counts of the model."""
        ...

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        """Loss and per-token target logprobs of ``data`` under the current weights; no
        gradient is kept. Metrics include ``loss:sum`` and ``tokens:sum``."""
        ...

    def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> Future[ForwardBackwardOutput]:
        """Like ``forward``, and add the gradient of the summed loss to the accumulated
        gradient. Gradients accumulate across calls until the next ``optim_step``."""
        ...

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        """Apply one AdamW update with the accumulated gradient, then zero it. ``params``
        may differ on every call (a schedule changes the LR). A non-finite gradient (NaN or
        Inf) changes neither weights nor optimizer state; the result reports its norm."""
        ...

    def save_state(self, name: str) -> Future[CheckpointRef]:
        """Save trainable weights, optimizer state and step under ``name``; the ref and the
        saved manifest both record the session's run id, the name and the step.

        Atomic: the returned ref only resolves once every blob is completely written; a failure
        part-way leaves no loadable partial checkpoint and never damages an earlier one.
        """
        ...

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        """Restore a state saved by ``save_state``; training then continues exactly as it
        would have from the moment it was saved. A checkpoint whose manifest records another
        run id, name or step than ``ref`` (one copied over another) fails the future with
        ``CheckpointMismatchError``; a missing or altered blob with
        ``CorruptCheckpointError``. Either way nothing is loaded."""
        ...

    def load_weights(self, ref: CheckpointRef) -> Future[None]:
        """Start from the weights of ``ref`` alone (a state checkpoint, or sampler weights an
        adapter can read back, such as a LoRA adapter): the optimizer state and the step
        start anew, as Tinker's ``load_state`` does next to ``load_state_with_optimizer``.
        Weights of another base model or LoRA shape fail the future with ``ValidationError``
        naming both; nothing is loaded."""
        ...

    def save_weights_for_sampler(self, name: str) -> Future[CheckpointRef]:
        """Export the current weights in a form a Completer loads (for LoRA, the adapter)."""
        ...

    def save_weights_and_get_sampling_client(self) -> Future[Completer]:
        """A Completer bound to the weights as of this call: every request submitted before
        it applied, later ones not. Nothing is written to storage (Tinker's ephemeral
        ``save_weights_and_get_sampling_client``): what an RL loop samples from. The
        completer samples only those weights (``model=`` is refused); it holds a copy of
        them until it is dropped."""
        ...

    def close(self) -> None:
        """Finish queued requests and release resources; later requests are refused."""
        ...


@runtime_checkable
class TrainingClient(Protocol):
    """Starts training sessions on some backend (local accelerator, remote service, fake)."""

    def start_session(self, config: SessionConfig) -> TrainingSession:
        """A fresh session: the base model loaded, LoRA (or full) parameters initialised from
        ``config.lora.seed``, optimizer state empty, step 0. Raises if the model can't be had."""
        ...
