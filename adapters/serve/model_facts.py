"""What ``galley serve`` tells clients about a base model: its tokenizer and its context
length, read once from the model folder the hub has (None where it has none)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tinker import types as tt

from galley.adapters.hf.model_files import resolve_model_folder
from galley.core.errors import GalleyError
from galley.ports.hub import HubClient


class ModelFacts:
    def __init__(self, hub: HubClient) -> None:
        self.hub = hub
        self._tokenizers: dict[str, str | None] = {}
        self._contexts: dict[str, int | None] = {}

    def tokenizer_id(self, base_model: str) -> str | None:
        """A local folder ``AutoTokenizer.from_pretrained`` loads offline, if the hub has one."""
        if base_model not in self._tokenizers:
            try:
                folder: Path | None = resolve_model_folder(base_model, self.hub)
            except (GalleyError, OSError):
                folder = None
            ok = folder is not None and (folder / "tokenizer.json").is_file()
            self._tokenizers[base_model] = str(folder) if ok else None
        return self._tokenizers[base_model]

    def context_length(self, base_model: str) -> int | None:
        """From the model folder's config, where the hub has one."""
        if base_model not in self._contexts:
            try:
                folder = resolve_model_folder(base_model, self.hub)
                config = json.loads((folder / "config.json").read_text())
                self._contexts[base_model] = int(config["max_position_embeddings"])
            except (GalleyError, OSError, ValueError, KeyError, TypeError):
                self._contexts[base_model] = None
        return self._contexts[base_model]

    def capabilities(self, models: Iterable[str]) -> tt.GetServerCapabilitiesResponse:
        """The models the server offers, each trainable and sampleable."""
        return tt.GetServerCapabilitiesResponse(
            supported_models=[
                tt.SupportedModel(
                    model_name=m,
                    max_context_length=self.context_length(m),
                    trainable=True,
                    sampleable=True,
                )
                for m in models
            ]
        )
