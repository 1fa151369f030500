"""Scanning over layers trains as the unrolled model does, its checkpoints and exports are
the unrolled model's, and its program does not grow with depth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from safetensors.numpy import load

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SamplingParams, SessionConfig
from tests.hf_models import make_model
from tests.jax_steps import lowered_step

TEXTS = ["the quick brown fox", "jumps over the lazy dog", "a galley", "numbers 0 1 2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("scan") / "m", "qwen3", num_hidden_layers=3)


def trained(
    folder: Path, blobs: NoopBlobStore, *, scan: bool, rank: int
) -> tuple[Any, list[float]]:
    client = JaxTrainingClient(NoopHubClient(), blobs, scan_layers=scan)
    config = SessionConfig(str(folder), LoraConfig(rank=rank), run_id="r", storage_prefix=f"{scan}")
    session = client.start_session(config)
    tok = session.tokenizer
    data = [Datum.from_tokens(tok.encode(t), [1.0] * len(tok.encode(t))) for t in TEXTS]
    losses = []
    for _ in range(3):
        losses.append(session.forward_backward(data).result().metrics["loss:sum"])
        session.optim_step(AdamParams(learning_rate=1e-2)).result()
    return session, losses


@pytest.mark.parametrize("rank", [4, 0])
def test_a_scanned_model_trains_exports_and_checkpoints_as_the_unrolled_one(
    folder: Path, rank: int
) -> None:
    blobs = NoopBlobStore()
    scanned, scanned_losses = trained(folder, blobs, scan=True, rank=rank)
    plain, plain_losses = trained(folder, blobs, scan=False, rank=rank)
    np.testing.assert_allclose(scanned_losses, plain_losses, rtol=1e-5)
    up = scanned._trainable["layers"][0]["mlp"]["up_proj"]["lora_a" if rank else "kernel"]
    assert up[...].shape[0] == 3  # the layers' weights really are stacked
    assert len(scanned._trainable["layers"]) == 1

    # The checkpoint names every layer's tensors as the unrolled model does: it loads there.
    ref = scanned.save_state("s").result()
    names = set(blobs.read(f"{ref.key}/manifest.json").decode().split('"')) & {"state.safetensors"}
    assert names == {"state.safetensors"}
    loaded = JaxTrainingClient(NoopHubClient(), blobs).start_session(
        SessionConfig(str(folder), LoraConfig(rank=rank), run_id="r", storage_prefix="u")
    )
    loaded.load_state(ref).result()
    for a, b in zip(
        jax.tree.leaves(plain._trainable), jax.tree.leaves(loaded._trainable), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # ...and back: the unrolled session's checkpoint loads scanned.
    back = JaxTrainingClient(NoopHubClient(), blobs, scan_layers=True).start_session(
        SessionConfig(str(folder), LoraConfig(rank=rank), run_id="r", storage_prefix="s2")
    )
    back.load_state(loaded.save_state("u").result()).result()
    for a, b in zip(
        jax.tree.leaves(scanned._trainable), jax.tree.leaves(back._trainable), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    if not rank:
        return  # the sampler and the export read the same unrolled view as under LoRA
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    sampler = scanned.save_weights_and_get_sampling_client().result()
    unrolled_sampler = loaded.save_weights_and_get_sampling_client().result()
    assert (
        sampler.complete("the quick", greedy).sequences[0].tokens
        == unrolled_sampler.complete("the quick", greedy).sequences[0].tokens
    )
    export = scanned.save_weights_for_sampler("e").result()
    plain_export = plain.save_weights_for_sampler("e").result()
    ours = load(blobs.read(f"{export.key}/adapter_model.safetensors"))
    theirs = load(blobs.read(f"{plain_export.key}/adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(ours) == 3 * 7 * 2 + 2
    for name, tensor in ours.items():
        np.testing.assert_allclose(tensor, theirs[name], atol=1e-4, err_msg=name)


def program_size(folder: Path, layers: int, *, scan: bool) -> int:
    """The lowered training step's text length for a model of ``layers`` layers."""
    model = make_model(folder / f"m{layers}", "llama", num_hidden_layers=layers)
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), scan_layers=scan)
    s = client.start_session(SessionConfig(str(model), LoraConfig(rank=4)))
    data = [Datum.from_tokens([3, 4, 5, 6], [1.0] * 4)]
    lowered = lowered_step(s, data)
    return len(lowered.as_text())


def test_the_scanned_program_does_not_grow_with_depth(tmp_path: Path) -> None:
    scanned = [program_size(tmp_path, n, scan=True) for n in (2, 8)]
    unrolled = [program_size(tmp_path, n, scan=False) for n in (2, 8)]
    assert scanned[1] < 1.05 * scanned[0]
    assert unrolled[1] > 2.5 * unrolled[0]  # the peer: one copy of the layer per layer
