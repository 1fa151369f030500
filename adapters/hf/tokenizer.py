"""A model's tokenizer from ``tokenizer.json`` (+ ``tokenizer_config.json``), via ``tokenizers``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from galley.adapters.hf.chat_template import ChatTemplateRenderer
from galley.core.errors import NotFoundError, ValidationError


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
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception types
            raise ValidationError(str(path), f"is not a readable tokenizer: {e}") from None
        config_path = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                self.config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValidationError(str(config_path), f"is not readable JSON: {e}") from None
            if not isinstance(self.config, dict):
                raise ValidationError(str(config_path), "is not a JSON object")
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

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(o) for o in encoding.offsets]  # type: ignore[misc]

    def chat_renderer(self) -> ChatTemplateRenderer:
        """A renderer using the model's chat template; raises if the model has none."""
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: use "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise ValidationError(
                "renderer", "the model's tokenizer_config.json has no chat_template"
            )
        specials = {
            k: v
            for k in ("bos_token", "eos_token")
            if isinstance(v := _token_text(self.config.get(k)), str)
        }
        return ChatTemplateRenderer(template, self.encode_with_offsets, specials)
