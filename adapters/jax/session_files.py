"""What a JAX training session reads and writes as checkpoints, apart from the session: the
checks a saved state must pass before it is loaded, its tensors as a state tree, the
manifest written once across processes, and sampler exports (a PEFT adapter, or the merged
model as an HF folder)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save as save_safetensors

from galley.adapters.jax.model import CausalLM
from galley.adapters.jax.peft_export import merged_hf_tensors, peft_adapter_files
from galley.adapters.jax.scan import stacked
from galley.adapters.jax.sharding import sync_processes
from galley.adapters.jax.state_files import STATE_FILE, has_state, whole_tensors
from galley.core.domain.types import CheckpointRef, LoraConfig, SessionConfig
from galley.core.errors import ValidationError
from galley.core.runs.manifest import BlobDigest, CheckpointMismatchError, Manifest
from galley.core.runs.manifest import write_checkpoint as write_manifested
from galley.ports.blobs import BlobStore


def lora_meta(lora: LoraConfig) -> dict[str, Any]:
    """A LoRA's shape as a checkpoint's manifest records it."""
    return {
        "rank": lora.rank,
        "alpha": lora.alpha,
        "attn": lora.train_attn,
        "mlp": lora.train_mlp,
        "unembed": lora.train_unembed,
    }


def lora_shape(meta: Mapping[str, Any]) -> str:
    """A LoRA's shape in words: "rank 16, alpha 32 on attn, mlp" (or full fine-tuning)."""
    if not meta or not meta.get("rank"):
        return "none (full fine-tuning)"
    on = ", ".join(k for k in ("attn", "mlp", "unembed") if meta.get(k))
    return f"rank {meta['rank']}, alpha {float(meta['alpha']):g} on {on}"


def check_state_checkpoint(
    manifest: Manifest,
    files: dict[str, bytes],
    ref: CheckpointRef,
    lora: LoraConfig,
    call: str,
) -> None:
    """Refuse a state checkpoint another adapter saved, or one of another LoRA shape."""
    if not has_state(files):
        raise CheckpointMismatchError(
            f"checkpoint {ref.key!r} was not saved by the JAX training adapter "
            f"(it has no {STATE_FILE}): resume with the adapter that saved it"
        )
    saved, mine = json.loads(manifest.meta.get("lora", "{}")), lora_meta(lora)
    if saved != mine:
        raise ValidationError(
            call,
            f"checkpoint {ref.key!r} has LoRA {lora_shape(saved)}; this session has "
            f"{lora_shape(mine)}",
        )


def unflatten_like(template: Any, tensors: Mapping[str, np.ndarray[Any, Any]], source: str) -> Any:
    """``tensors`` (by path in the tree) as a tree shaped and typed like ``template``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if name not in tensors:
            raise ValidationError(source, f"missing tensor {name!r}")
        value = tensors[name]
        if value.shape != np.shape(leaf):
            raise ValidationError(
                source, f"tensor {name!r} has shape {value.shape}, expected {np.shape(leaf)}"
            )
        out.append(jnp.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def saved_state(files: dict[str, bytes], ref: CheckpointRef, template: Any, layers: int) -> Any:
    """A state checkpoint's tensors as a state tree like ``template`` (host arrays)."""
    source = f"checkpoint {ref.key!r}"
    tensors = whole_tensors(files, source)
    if layers:
        tensors = stacked(tensors, template, layers)
    return unflatten_like(template, tensors, source)


def write_checkpoint(
    blobs: BlobStore,
    config: SessionConfig,
    step: int,
    ref: CheckpointRef,
    files: dict[str, bytes],
    meta: dict[str, str],
    written: dict[str, BlobDigest] | None = None,
) -> None:
    """``files`` and the manifest, written by process 0 (the others hold the same files,
    or wrote their ``written`` parts already); every process returns once they are."""
    if jax.process_index() == 0:
        write_manifested(
            blobs,
            ref.key,
            kind=ref.kind,
            name=ref.name,
            run_id=config.run_id,
            step=step,
            files=files,
            meta=meta,
            written=written,
        )
    sync_processes(f"saved {ref.key}")


def sampler_files(
    model: CausalLM, config: SessionConfig, folder: Path, *, merged: bool
) -> tuple[dict[str, bytes], str]:
    """A sampler export's files and format: the merged model as an HF folder, or a PEFT
    adapter."""
    if not merged:
        return peft_adapter_files(model, config), "peft"
    tensors = merged_hf_tensors(model)
    files = {"model.safetensors": save_safetensors(tensors)}
    for extra in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (folder / extra).is_file():
            files[extra] = (folder / extra).read_bytes()
    hf_config = json.loads((folder / "config.json").read_text())
    # A LoRA on a tied head unties it: the merged head differs from the embedding.
    hf_config["tie_word_embeddings"] = model.cfg.family.names.weight("lm_head") not in tensors
    files["config.json"] = json.dumps(hf_config, indent=2).encode()
    return files, "merged"
