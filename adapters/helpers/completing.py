"""One way to implement the Completer port. A completer writes ``complete_batch`` (one
request for the whole batch, which is how galley samples: a step's prompts, an evaluation's);
``complete`` is that for one prompt, and ``stream`` yields the completion's text once it is
sampled unless the completer streams pieces of its own. The port keeps all three methods, so
a plugin written against it, with or without this base, works unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ModelRef, SamplingParams
from galley.core.errors import ValidationError


class BatchCompleter:
    """The base of galley's completers: ``complete`` and ``stream`` from ``complete_batch``."""

    def complete_batch(
        self,
        prompts: Sequence[str | ModelInput],
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> list[Completion]:
        raise NotImplementedError

    def complete(
        self,
        prompt: str | ModelInput,
        params: SamplingParams,
        *,
        model: ModelRef | None = None,
        num_samples: int = 1,
    ) -> Completion:
        return self.complete_batch([prompt], params, model=model, num_samples=num_samples)[0]

    def stream(
        self, prompt: str | ModelInput, params: SamplingParams, *, model: ModelRef | None = None
    ) -> Iterator[str]:
        text = self.complete(prompt, params, model=model).text
        if text:
            yield text


def prompt_token_ids(
    prompt: str | ModelInput, encode: Callable[[str], list[int]], bos: int | None
) -> list[int]:
    """A prompt's token ids: a ModelInput's as they are; a text's as its tokenizer's BOS
    (when it has one), then the text's tokens. An empty prompt is refused."""
    if isinstance(prompt, ModelInput):
        ids = prompt.to_ints()
    else:
        ids = ([bos] if bos is not None else []) + encode(prompt)
    if not ids:
        raise ValidationError("prompt", "is empty; expected at least one token")
    return ids
