"""Completer: sampling text from a base model, optionally with exported trained weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ModelRef, SamplingParams

Prompt = str | ModelInput


@runtime_checkable
class Completer(Protocol):
    """``model=None`` samples from the completer's configured model. A string prompt is
    encoded with the model's tokenizer as is (no chat template: render first for chat).
    With ``params.seed`` set, results are reproducible; with temperature 0 they are greedy."""

    def complete(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> Completion:
        """``num_samples`` independent sequences for one prompt."""
        ...

    def complete_batch(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> list[Completion]:
        """One Completion per prompt, in order, each of ``num_samples`` sequences; prompts
        may differ in length. An adapter that can decodes them all as one batch."""
        ...

    def stream(
        self, prompt: Prompt, params: SamplingParams, *, model: ModelRef | None = None
    ) -> Iterator[str]:
        """Text as it is generated; the pieces join to ``complete(...).text``."""
        ...
