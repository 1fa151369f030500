"""The tokenizer a training session exposes (encode/decode/eos)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids for one model. Must be deterministic and thread-safe."""

    @property
    def vocab_size(self) -> int:
        """Number of token ids (every id the model can read or predict is below it)."""
        ...

    @property
    def eos_token_id(self) -> int:
        """The id that ends a sequence (sampling stops at it)."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """Prepended to every rendered sequence when not None."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        ...

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; special tokens are dropped."""
        ...
