"""A model's tokenizer from ``tokenizer.json`` (+ ``tokenizer_config.json``), via ``tokenizers``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from galley.core.errors import NotFoundError


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizerAdapter:
    """galley's Tokenizer over a ``tokenizers`` tokenizer. BOS is prepended by renderers only
    when the model's tokenizer config asks for it (``add_bos_token``)."""

    def __init__(
        self, folder: Path, eos_fallback: Sequence[int] = (), bos_fallback: int | None = None
    ) -> None:
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise NotFoundError(f"model folder {str(folder)!r} has no tokenizer.json")
        self._tok = HFTokenizer.from_file(str(path))
        config_path = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = (
            json.loads(config_path.read_text()) if config_path.is_file() else {}
        )
        eos = self._id(_token_text(self.config.get("eos_token")))
        self._eos = eos if eos is not None else (eos_fallback[0] if eos_fallback else 0)
        bos = self._id(_token_text(self.config.get("bos_token")))
        self._bos = (
            bos
            if self.config.get("add_bos_token", bos is not None and bos_fallback is not None)
            else None
        )
        self._vocab = self._tok.get_vocab_size(with_added_tokens=True)

    def _id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self._tok.decode(list(tokens), skip_special_tokens=True))
