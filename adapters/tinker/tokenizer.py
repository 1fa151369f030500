"""Tokenizers with galley's semantics (``HFTokenizerAdapter``: BOS only where the tokenizer's
config asks for it), so a workflow renders the same tokens through this adapter as through
the JAX one."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
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


def for_model(
    names: Sequence[str | None], hub: HubClient | None, sdk_tokenizer: Callable[[], Any]
) -> HFTokenizerAdapter:
    """The first of ``names`` (a tokenizer folder the service named, the base model) that is a
    local folder or that galley's hub has (the embedded models, the HF Hub: tokenizer files
    only); else the tokenizer the SDK loads (``sdk_tokenizer()``)."""
    for name in (n for n in names if n):
        folder = Path(name).expanduser()
        try:
            if not folder.is_dir():
                if hub is None:
                    continue
                folder = hub.snapshot(name, allow_patterns=TOKENIZER_FILES)
            return HFTokenizerAdapter(folder)
        except (GalleyError, OSError):
            continue
    return from_sdk(sdk_tokenizer())
