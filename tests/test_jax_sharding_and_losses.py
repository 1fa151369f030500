"""Data parallelism on a device mesh and sharded checkpoints. (A custom loss through the
linearisation against JAX's direct gradient: tests/test_dpo.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import Datum, SessionConfig
from tests.hf_models import make_model
from tests.python_script import run_python

MESH_SCRIPT = """
import json, sys
import jax, numpy as np
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
devices, packing = jax.devices()[: int(sys.argv[2])], sys.argv[3] == "packed"
client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), devices=devices, packing=packing)
s = client.start_session(SessionConfig(sys.argv[1], LoraConfig(rank=4)))
tok = s.tokenizer
texts = ["the quick brown fox", "jumps over", "the lazy dog", "a galley", "rowed", "numbers 0 1 2"]
texts.append(" ".join(texts * 3))  # one long row: the others pack beside it
data = [Datum.from_tokens(tok.encode(t), [1.0] * len(tok.encode(t))) for t in texts]
(batch,) = s._prepare(data, "cross_entropy", None)[1]
losses = []
for _ in range(3):
    losses.append(s.forward_backward(data).result().metrics["loss:sum"])
    s.optim_step(AdamParams(learning_rate=1e-2))
weights = [lp.tolist() for lp in s.forward(data).result().logprobs]
used = len(jax.tree.leaves(s._trainable)[0].sharding.device_set)
print(json.dumps({"devices": used, "losses": losses, "logprobs": weights,
                  "rows": batch.tokens.shape[0], "packed": batch.segments is not None}))
"""


def run_on_devices(folder: Path, n: int, layout: str) -> dict[str, object]:
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    return run_python(MESH_SCRIPT, str(folder), str(n), layout, env=env)


def test_four_devices_train_like_one(tmp_path: Path) -> None:
    """Four devices with packed rows train as one device with a row a datum."""
    folder = make_model(tmp_path / "m", "qwen2")
    one, four = run_on_devices(folder, 1, "padded"), run_on_devices(folder, 4, "packed")
    assert four["devices"] == 4 and one["devices"] == 1
    assert four["packed"] and not one["packed"]
    assert four["rows"] == 4 and one["rows"] == 8  # type: ignore[comparison-overlap]
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(four["logprobs"], one["logprobs"], strict=True):  # type: ignore[call-overload]
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sharded_checkpoints_load(tmp_path: Path) -> None:
    """A model split over index-listed shards gives the single file's log-probabilities."""
    folder = make_model(tmp_path / "m", "llama")
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    data = [Datum.from_tokens([0, 4, 9, 12], [0, 1, 1, 1])]
    whole = client.start_session(SessionConfig(str(folder))).forward(data).result().logprobs[0]
    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    # Another client: one client shares a model folder's frozen weights across its sessions.
    fresh = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    sharded = fresh.start_session(SessionConfig(str(folder)))
    logprobs = sharded.forward(data).result().logprobs[0]
    assert logprobs.shape == (3,)
    np.testing.assert_array_equal(logprobs, whole)
