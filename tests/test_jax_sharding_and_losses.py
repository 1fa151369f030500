"""Data parallelism on a device mesh, custom losses through linearisation, sharded checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.losses import custom_loss_from_jax
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig, forward_backward_custom
from tests.hf_models import make_model
from tests.python_script import run_python

MESH_SCRIPT = """
import json, sys
import jax, numpy as np
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
devices = jax.devices()[: int(sys.argv[2])]
client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), devices=devices)
s = client.start_session(SessionConfig(sys.argv[1], LoraConfig(rank=4)))
tok = s.tokenizer
texts = ["the quick brown fox", "jumps over", "the lazy dog", "a galley", "rowed", "numbers 0 1 2"]
data = [Datum.from_tokens(tok.encode(t), [1.0] * len(tok.encode(t))) for t in texts]
losses = []
for _ in range(3):
    losses.append(s.forward_backward(data).result().metrics["loss:sum"])
    s.optim_step(AdamParams(learning_rate=1e-2))
weights = [lp.tolist() for lp in s.forward(data).result().logprobs]
used = len(jax.tree.leaves(s._trainable)[0].sharding.device_set)
print(json.dumps({"devices": used, "losses": losses, "logprobs": weights}))
"""


def run_on_devices(folder: Path, n: int) -> dict[str, object]:
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    return run_python(MESH_SCRIPT, str(folder), str(n), env=env)


def test_four_devices_train_like_one(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", "qwen2")
    one, four = run_on_devices(folder, 1), run_on_devices(folder, 4)
    assert four["devices"] == 4 and one["devices"] == 1
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(four["logprobs"], one["logprobs"], strict=True):  # type: ignore[call-overload]
        np.testing.assert_allclose(a, b, atol=1e-5)


def dpo(data: list[Datum], logprobs: list[jax.Array], beta: float = 0.5) -> jax.Array:
    """DPO on (chosen, rejected) pairs with a zero reference (sums of masked logprobs)."""
    total = jnp.zeros(())
    for i in range(0, len(data), 2):
        w_c = jnp.asarray(data[i].loss_fn_inputs["weights"].data)
        w_r = jnp.asarray(data[i + 1].loss_fn_inputs["weights"].data)
        margin = (logprobs[i] * w_c).sum() - (logprobs[i + 1] * w_r).sum()
        total = total - jax.nn.log_sigmoid(beta * margin)
    return total


def test_dpo_by_linearisation_gives_the_direct_gradient(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", "llama")
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=4)))
    session.forward_backward([Datum.from_tokens([0, 5, 6, 7], [0, 1, 1, 1])])
    session.optim_step(AdamParams(learning_rate=0.05)).result()  # make LoRA B non-zero
    session._grads = jax.tree.map(jnp.zeros_like, session._grads)
    tok = session.tokenizer
    pairs = [("the quick brown fox", "the lazy dog"), ("a galley", "a ship rowed")]
    data = []
    for chosen, rejected in pairs:
        for text in (chosen, rejected):
            ids = [0, *tok.encode(text)]
            data.append(Datum.from_tokens(ids, [0.0] + [1.0] * (len(ids) - 1)))
    out = forward_backward_custom(session, data, custom_loss_from_jax(dpo)).result()
    linearised = jax.tree.map(np.asarray, session._grads)

    # The direct gradient: differentiate DPO through the model itself.
    from galley.adapters.jax.batching import pad_batch
    from galley.adapters.jax.training import _forward_logprobs
    from galley.core import ForwardBackwardInput

    batch = pad_batch(ForwardBackwardInput(data), client.length_buckets, 1)
    arrays = {"tokens": jnp.asarray(batch.tokens), "targets": jnp.asarray(batch.targets)}

    def direct(trainable: object) -> jax.Array:
        logp = _forward_logprobs(session._graphdef, trainable, session._frozen, arrays)
        return dpo(data, [logp[i, :n] for i, n in enumerate(batch.lengths)])

    value, grads = jax.value_and_grad(direct)(session._trainable)
    assert out.loss == pytest.approx(float(value), rel=1e-5)
    for a, b in zip(jax.tree.leaves(linearised), jax.tree.leaves(grads), strict=True):
        scale = float(np.abs(np.asarray(b)).max()) or 1.0  # float32 sums in another order
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))


def test_sharded_checkpoints_load(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", "llama")
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
    sharded = JaxTrainingClient(NoopHubClient(), NoopBlobStore()).start_session(
        SessionConfig(str(folder))
    )
    data = [Datum.from_tokens([0, 4, 9, 12], [0, 1, 1, 1])]
    logprobs = sharded.forward(data).result().logprobs[0]
    assert logprobs.shape == (3,) and np.isfinite(logprobs).all()
