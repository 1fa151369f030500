"""A byte-level tokenizer: ids 0-255 are UTF-8 bytes, then BOS, EOS and PAD."""

from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
    BOS, EOS, PAD = 256, 257, 258

    @property
    def vocab_size(self) -> int:
        return 259

    @property
    def eos_token_id(self) -> int:
        return self.EOS

    @property
    def bos_token_id(self) -> int | None:
        return self.BOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")
