"""FSDP and tensor parallelism: a sharded session trains, resumes and samples as one device
does. The meshes run on four fake CPU devices in subprocesses (the device count is fixed when
JAX starts), one for LoRA and one for full fine-tuning side by side, each mesh against the
same model on one device of it."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import jax
import numpy as np
import pytest

from galley.adapters.jax.families import LLAMA_SHARDING
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.sharding import Layout, param_name
from galley.core.errors import ConfigError
from tests.hf_models import make_model
from tests.python_script import run_python_together

MESHES = {
    "FSDP 4": {"fsdp": 4},
    "DP 2 x FSDP 2": {"data": 2, "fsdp": 2},
    "TP 2": {"data": 1, "tensor": 2},
}

SCRIPT = """
import json, sys
import jax, numpy as np
from galley.adapters.jax import JaxCompleter, JaxTrainingClient
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.plan import plan_memory
from galley.adapters.jax.state_files import flat_named
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SamplingParams, SessionConfig

folder, mode, meshes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
TEXTS = ["the quick brown fox", "jumps over", "the lazy dog", "a galley", "rowed", "numbers 0 1"]
GREEDY, SEEDED = SamplingParams(max_tokens=10, temperature=0.0), SamplingParams(
    max_tokens=10, temperature=1.0, seed=7)


def fraction(array):
    # The share of the array the first device holds.
    return array.addressable_shards[0].data.size / array.size


BLOBS, SAVED = NoopBlobStore(), {}


def session(client, rank, prefix):
    config = SessionConfig(folder, LoraConfig(rank=rank), run_id="mesh", storage_prefix=prefix)
    return client.start_session(config)


def train(s, steps):
    tok = s.tokenizer
    data = [Datum.from_tokens(tok.encode(t), [1.0] * len(tok.encode(t))) for t in TEXTS]
    losses = []
    for _ in range(steps):
        losses.append(s.forward_backward(data).result().metrics["loss:sum"])
        s.optim_step(AdamParams(learning_rate=1e-2)).result()
    return losses


def weights(s):
    return {k: v.tolist() for k, v in flat_named(s._trainable).items()}


def summary(i, mesh, rank):
    client = JaxTrainingClient(NoopHubClient(), BLOBS, mesh=MeshShape(**mesh))
    s = session(client, rank, f"m{i}")
    losses = train(s, 3)
    kernel = s._frozen if rank else s._trainable
    q = kernel["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    mu = jax.tree.leaves(s._opt_state.inner_state[0].mu)
    sampler = s.save_weights_and_get_sampling_client().result()
    plan = plan_memory(s.model_config, LoraConfig(rank=rank), dtype=np.float32,
                       mesh=MeshShape(**mesh), devices=4, rows=6, length=32)
    resident = {
        name: sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(tree))
        for name, tree in [("frozen", s._frozen), ("trainable", s._trainable),
                           ("optimizer", s._opt_state), ("gradients", s._grads)]
    }
    planned = {"frozen": plan.frozen_weights, "trainable": plan.trainable_weights,
               "optimizer": plan.optimizer_state, "gradients": plan.gradients}
    out = {
        "losses": losses,
        "weights": weights(s),
        "resident_bytes": resident,
        "planned_bytes": planned,
        "q_kernel_share": fraction(q),
        "largest_moment_share": max(fraction(m) for m in mu if m.ndim == 2),
        "largest_grads_share": max(fraction(g) for g in jax.tree.leaves(s._grads) if g.ndim == 2),
        "session_greedy": sampler.complete("the quick", GREEDY).sequences[0].tokens,
        "session_seeded": sampler.complete("the quick", SEEDED).sequences[0].tokens,
    }
    # Resume on the same mesh: 2 more steps after a save equal 2 steps of a session loaded
    # from it, bit for bit.
    SAVED[i] = ref = s.save_state("at3").result()
    going_on = train(s, 2)
    resumed = session(client, rank, f"m{i}-resumed")
    resumed.load_state(ref).result()
    after_load = train(resumed, 2)
    out["resume_exact"] = going_on == after_load and all(
        np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(s._trainable), jax.tree.leaves(resumed._trainable)))
    kernels = resumed._frozen if rank else resumed._trainable
    out["resumed_share"] = fraction(kernels["layers"][0]["mlp"]["up_proj"]["kernel"][...])
    return out


def completer(mesh):
    c = JaxCompleter(NoopHubClient(), NoopBlobStore(), model=folder, mesh=MeshShape(**mesh))
    return {
        "greedy": c.complete("the quick", GREEDY).sequences[0].tokens,
        "seeded": c.complete("the quick", SEEDED).sequences[0].tokens,
        "embed_share": fraction(c._load(None).state["embed_tokens"][...]),
    }


rank, result = 4 if mode == "lora" else 0, {}
named = [("one device", {"data": 1})] + list(meshes.items())
for i, (name, mesh) in enumerate(named):
    result[name] = summary(i, mesh, rank)
    if mode == "full":
        result[name]["completer"] = completer(mesh)
# A sharded session's checkpoint loads on one device: its files do not depend on the mesh.
one = JaxTrainingClient(NoopHubClient(), BLOBS, mesh=MeshShape(data=1))
for i, (name, _) in enumerate(named):
    s = session(one, rank, f"m{i}-on-one")
    s.load_state(SAVED[i]).result()
    result[name]["loaded_on_one_device"] = weights(s)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per mesh: {"lora": summary, "full": summary, "completer": ...}."""
    folder = str(make_model(tmp_path_factory.mktemp("mesh") / "m", "qwen2"))
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    meshes = json.dumps(MESHES)
    lora, full = run_python_together(
        SCRIPT, [[folder, "lora", meshes], [folder, "full", meshes]], env=env
    )
    return {
        name: {"lora": lora[name], "full": full[name], "completer": full[name]["completer"]}
        for name in lora
    }


@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_sharded_session_trains_as_one_device_does(
    runs: dict[str, Any], mesh: str, mode: str
) -> None:
    one, sharded = runs["one device"][mode], runs[mesh][mode]
    np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=1e-5)
    assert sharded["losses"][-1] < sharded["losses"][0]
    assert sharded["weights"].keys() == one["weights"].keys()
    # Adam divides each gradient by its own scale, so where a gradient is near zero a change
    # in reduction order moves the weight by up to a fraction of the learning rate (1e-2).
    for name, weight in one["weights"].items():
        np.testing.assert_allclose(sharded["weights"][name], weight, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_weights_and_optimizer_state_really_are_split(
    runs: dict[str, Any], mesh: str, mode: str
) -> None:
    shape = MeshShape(**MESHES[mesh])
    split = shape.fsdp * shape.tensor  # q's kernel splits over both
    sharded = runs[mesh][mode]
    assert sharded["q_kernel_share"] == 1 / split
    assert runs["one device"][mode]["q_kernel_share"] == 1
    # Every matrix's moments and gradient are split as the matrix is, after the steps too
    # (a LoRA factor's wide dimension over both axes).
    assert sharded["largest_moment_share"] == 1 / split
    assert sharded["largest_grads_share"] == 1 / split
    assert sharded["resumed_share"] == 1 / split
    assert runs[mesh]["completer"]["embed_share"] == 1 / split


@pytest.mark.parametrize("mesh", ["one device", *MESHES])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_the_plan_counts_each_devices_weights_and_optimizer_state_exactly(
    runs: dict[str, Any], mesh: str, mode: str
) -> None:
    sharded = runs[mesh][mode]
    assert sharded["planned_bytes"] == sharded["resident_bytes"]


@pytest.mark.parametrize("mesh", ["one device", *MESHES])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_on_the_same_mesh_is_bit_exact(runs: dict[str, Any], mesh: str, mode: str) -> None:
    assert runs[mesh][mode]["resume_exact"] is True


@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_sharded_checkpoint_loads_on_one_device(
    runs: dict[str, Any], mesh: str, mode: str
) -> None:
    sharded = runs[mesh][mode]
    assert sharded["loaded_on_one_device"] == sharded["weights"]


@pytest.mark.parametrize("mesh", list(MESHES))
def test_sampling_on_a_sharded_mesh_gives_one_devices_tokens(
    runs: dict[str, Any], mesh: str
) -> None:
    one, sharded = runs["one device"], runs[mesh]
    for mode in ("lora", "full"):  # the in-memory handoff from a training session
        for kind in ("session_greedy", "session_seeded"):
            assert sharded[mode][kind] == one[mode][kind], (mode, kind)
    assert sharded["completer"]["greedy"] == one["completer"]["greedy"]
    assert sharded["completer"]["seeded"] == one["completer"]["seeded"]
    assert len(one["completer"]["greedy"]) > 0


# -- the mesh's shape and the rules, in this process --------------------------------------


def test_mesh_shape_takes_the_devices_left_and_refuses_too_few() -> None:
    assert MeshShape().sizes(8) == (8, 1, 1)
    assert MeshShape(fsdp=2, tensor=2).sizes(8) == (2, 2, 2)
    assert MeshShape(data=1, tensor=2).sizes(8) == (1, 1, 2)
    with pytest.raises(ConfigError, match="needs 8 devices; 4 are available"):
        MeshShape(data=2, fsdp=4).sizes(4)
    with pytest.raises(ConfigError, match="needs 4 devices; 1 are available"):
        MeshShape(fsdp=4).sizes(1)
    with pytest.raises(ConfigError, match="mesh.fsdp: expected a positive integer, got 0"):
        MeshShape(fsdp=0)


def test_rules_split_kernels_their_lora_factors_and_keep_the_rest_whole() -> None:
    layout = Layout(MeshShape(data=1), jax.devices()[:1])
    # On one device every axis has size 1: each listed dimension splits (into one part).
    spec = layout.spec("self_attn.q_proj.kernel", (64, 32), LLAMA_SHARDING, transposed=False)
    assert tuple(spec) == ("fsdp", "tensor")
    assert tuple(
        layout.spec("self_attn.q_proj.kernel", (32, 64), LLAMA_SHARDING, transposed=True)
    ) == ("tensor", "fsdp")
    assert tuple(
        layout.spec("mlp.down_proj.lora_a", (96, 4), LLAMA_SHARDING, transposed=False)
    ) == (("tensor", "fsdp"), None)
    assert tuple(
        layout.spec("mlp.down_proj.lora_b", (4, 64), LLAMA_SHARDING, transposed=False)
    ) == (None, ("fsdp", "tensor"))
    assert tuple(layout.spec("norm.weight", (64,), LLAMA_SHARDING, transposed=False)) == (None,)
    assert tuple(layout.spec("b1", (), LLAMA_SHARDING, transposed=False)) == ()


def test_a_dimension_an_axis_does_not_divide_stays_whole() -> None:
    class FakeMesh:
        shape: ClassVar[dict[str, int]] = {"data": 1, "fsdp": 4, "tensor": 3}

    layout = Layout(MeshShape(data=1), jax.devices()[:1])
    layout.mesh = FakeMesh()  # type: ignore[assignment]
    spec = layout.spec("mlp.up_proj.kernel", (64, 96), LLAMA_SHARDING, transposed=False)
    assert tuple(spec) == ("fsdp", "tensor")
    spec = layout.spec("mlp.up_proj.kernel", (30, 100), LLAMA_SHARDING, transposed=False)
    assert tuple(spec) == (None, None)
    # A LoRA factor over both axes keeps those that divide it.
    spec = layout.spec("mlp.up_proj.lora_b", (4, 96), LLAMA_SHARDING, transposed=False)
    assert tuple(spec) == (None, ("tensor", "fsdp"))  # 3 x 4 parts of 8
    spec = layout.spec("mlp.up_proj.lora_b", (4, 100), LLAMA_SHARDING, transposed=False)
    assert tuple(spec) == (None, "fsdp")  # 3 does not divide 100; 4 does
    spec = layout.spec("mlp.up_proj.lora_b", (4, 7), LLAMA_SHARDING, transposed=False)
    assert tuple(spec) == (None, None)


def test_optimizer_moments_take_their_parameters_names() -> None:
    import optax

    params = {"layers": [{"self_attn": {"q_proj": {"kernel": np.zeros((2, 2))}}}]}
    state = optax.adamw(1e-3).init(params)
    names = {param_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert names == {"", "self_attn.q_proj.kernel"}  # the step count, and mu and nu


def test_the_mesh_is_an_adapter_option() -> None:
    from galley.adapters.composition import build_adapters, parse_adapters_table

    def built(mesh: dict[str, Any]) -> Any:
        table = {"default": "noop", "training": {"kind": "jax", "mesh": mesh}}
        return build_adapters(parse_adapters_table(table)).training

    assert built({"data": 1, "fsdp": 1}).layout.shape == MeshShape(data=1, fsdp=1)
    with pytest.raises(ConfigError, match="needs 2 devices; 1 are available"):
        built({"fsdp": 2})
    with pytest.raises(ConfigError, match=r"\[adapters.training\] \(jax\).*mesh.tensor"):
        built({"tensor": -1})
