"""What a model reads: token chunks (Tinker's ``ModelInput``)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.errors import ValidationError


def _token_tuple(value: Iterable[Any]) -> tuple[int, ...]:
    tokens = tuple(value)
    for i, t in enumerate(tokens):
        if isinstance(t, bool | np.bool_) or not isinstance(t, int | np.integer) or t < 0:
            raise ValidationError(
                f"EncodedTextChunk.tokens[{i}]", f"expected a token id >= 0, got {t!r}"
            )
    return tuple(int(t) for t in tokens)


@attrs.frozen
class EncodedTextChunk:
    """A run of token ids."""

    tokens: tuple[int, ...] = attrs.field(converter=_token_tuple)

    @property
    def length(self) -> int:
        return len(self.tokens)


def _chunks(value: Iterable[EncodedTextChunk]) -> tuple[EncodedTextChunk, ...]:
    return tuple(value)


@attrs.frozen
class ModelInput:
    """A sequence of chunks; today every chunk is text (images would be another chunk type)."""

    chunks: tuple[EncodedTextChunk, ...] = attrs.field(converter=_chunks, factory=tuple)

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        return cls((EncodedTextChunk(tokens),)) if len(tokens) else cls()

    @classmethod
    def empty(cls) -> ModelInput:
        return cls()

    def to_ints(self) -> list[int]:
        return [t for chunk in self.chunks for t in chunk.tokens]

    @functools.cached_property
    def token_array(self) -> npt.NDArray[np.int64]:
        """The tokens as a read-only int64 array, built once: every training step that
        reuses this input (each epoch of a dataset) reads it without converting again."""
        tokens = itertools.chain.from_iterable(chunk.tokens for chunk in self.chunks)
        array = np.fromiter(tokens, np.int64, self.length)
        array.flags.writeable = False
        return array

    @functools.cached_property
    def length(self) -> int:
        """Counted once: batching, requests and adapters ask for it dozens of times a step."""
        return sum(len(chunk.tokens) for chunk in self.chunks)

    def append(self, chunk: EncodedTextChunk) -> ModelInput:
        return ModelInput((*self.chunks, chunk))

    def append_ints(self, tokens: Sequence[int]) -> ModelInput:
        return self.append(EncodedTextChunk(tokens)) if len(tokens) else self
