"""Tokenizers with galley's semantics (``HFTokenizerAdapter``: BOS only where the tokenizer's
config asks for it), so a workflow renders the same tokens through this adapter as through
the JAX one."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from galley.adapters.hf.tokenizer import HFTokenizerAdapter
from galley.core.errors import GalleyError
from galley.ports.hub import HubClient

TOKENIZER_FILES = ["tokenizer*", "*.json"]


def from_sdk(tokenizer: Any) -> HFTokenizerAdapter:
    """galley's tokenizer of the ``transformers`` one the SDK hands out: read from the folder
    it came from (``galley serve`` gives one), else from its files written out, noting whether
    it adds BOS (``transformers`` does not write that down)."""
    source = Path(str(getattr(tokenizer, "name_or_path", "")))
    if source.is_dir() and (source / "tokenizer.json").is_file():
        return HFTokenizerAdapter(source)
    with tempfile.TemporaryDirectory(prefix="galley-tokenizer-") as written:
        folder = Path(written)
        tokenizer.save_pretrained(written)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        bos = tokenizer.bos_token_id
        config["add_bos_token"] = bos is not None and tokenizer.encode("a")[:1] == [bos]
        config_path.write_text(json.dumps(config))
        return HFTokenizerAdapter(folder)


def for_model(base_model: str, hub: HubClient | None, sampler: Any) -> HFTokenizerAdapter:
    """The base model's tokenizer from galley's hub (a local folder, the embedded models, the
    HF Hub: the tokenizer files only), else the one the SDK's sampling client loads."""
    if hub is not None:
        try:
            folder = Path(base_model).expanduser()
            if not folder.is_dir():
                folder = hub.snapshot(base_model, allow_patterns=TOKENIZER_FILES)
            return HFTokenizerAdapter(folder)
        except (GalleyError, OSError):
            pass
    return from_sdk(sampler.get_tokenizer())
