"""Gemma 2, Gemma 3, Phi-3 and the mixtures of experts (Qwen2-MoE, Qwen3-MoE, Mixtral)
against transformers + peft on CPU, one tiny model per family with every feature it has
switched on where it changes the output (``hf_models.FEATURES``): sliding windows shorter
than the sequences, soft-capped scores and logits, Gemma 3's rope per layer kind, Phi-3's
fused projections and LongRoPE on both sides of its original context, 4 experts routed top-2
(renormalised or not) and a shared expert."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from peft import PeftModel

from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.hf.model_files import SafetensorsReader
from galley.adapters.jax import JaxCompleter, JaxTrainingClient
from galley.adapters.jax.build import build_model
from galley.adapters.jax.config import ModelConfig, parse_config, read_config
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import (
    AdamParams,
    Datum,
    LoraConfig,
    ModelRef,
    SamplingParams,
    SessionConfig,
    ValidationError,
)
from tests.hf_models import make_model
from tests.jax_steps import texts, write_blobs
from tests.python_script import run_python

FAMILIES = ["gemma2", "gemma3", "phi3", "qwen2_moe", "qwen3_moe", "mixtral"]
MOE = {"qwen2_moe", "qwen3_moe", "mixtral"}
MLP = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> LocalDirectoryHub:
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:  # Gemma ties its head to the embedding, as the real ones do
        make_model(root / "tiny" / family, family, tie=family.startswith("gemma"))
    return LocalDirectoryHub(root)


def folder_of(hub: LocalDirectoryHub, family: str) -> Path:
    return hub.snapshot(f"tiny/{family}")


def hf_model(folder: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def logits_of(cfg: ModelConfig, folder: Path, tokens: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    model = build_model(cfg, SafetensorsReader(folder), None)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(model(jnp.asarray(tokens), positions)[0])


def moe(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    assert cfg.moe is not None
    return attrs.evolve(cfg, moe=attrs.evolve(cfg.moe, **changes))


# What each family's test model switches off, one at a time: each must change the logits,
# or the equality with transformers would not show that galley runs it.
FEATURES_OFF: dict[str, dict[str, Callable[[ModelConfig], ModelConfig]]] = {
    "gemma2": {
        "windows": lambda c: attrs.evolve(c, windows=(None, None, None)),
        "attention_softcap": lambda c: attrs.evolve(c, attention_softcap=None),
        "final_softcap": lambda c: attrs.evolve(c, final_softcap=None),
        "query_scale": lambda c: attrs.evolve(c, query_scale=None),
    },
    "gemma3": {
        "windows": lambda c: attrs.evolve(c, windows=(None, None, None)),
        "rope_local": lambda c: attrs.evolve(c, rope_local=None),
        "query_scale": lambda c: attrs.evolve(c, query_scale=None),
    },
    "phi3": {"windows": lambda c: attrs.evolve(c, windows=(None, None))},
    "qwen2_moe": {
        "top_k": lambda c: moe(c, top_k=1),
        "shared expert": lambda c: moe(c, shared_expert_size=0),
    },
    "qwen3_moe": {
        "top_k": lambda c: moe(c, top_k=1),
        "normalize_top_k": lambda c: moe(c, normalize_top_k=False),
    },
    "mixtral": {
        "top_k": lambda c: moe(c, top_k=1),
        "normalize_top_k": lambda c: moe(c, normalize_top_k=False),
    },
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [40, 64])  # Phi-3: within its original context, beyond it
def test_logits_match_transformers_and_every_feature_counts(
    hub: LocalDirectoryHub, family: str, length: int
) -> None:
    folder = folder_of(hub, family)
    cfg = read_config(folder)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, length))
    with torch.no_grad():
        ref = hf_model(folder)(torch.tensor(tokens)).logits.numpy()
    assert ref.std() > 1.0  # logits spread over several nats: a wrong model would show
    assert np.abs(logits_of(cfg, folder, tokens) - ref).max() <= 1e-4
    if length == 40:
        for feature, off in FEATURES_OFF[family].items():
            changed = logits_of(off(cfg), folder, tokens)
            assert np.abs(changed - ref).max() > 1e-2, f"{family}: {feature} changes nothing"


def test_longrope_switches_to_its_long_factors_beyond_the_original_context(
    hub: LocalDirectoryHub,
) -> None:
    cfg = read_config(folder_of(hub, "phi3"))
    rope = cfg.rope
    assert rope.kind == "longrope" and rope.original_max_position == 48
    assert rope.attention_factor == pytest.approx(np.sqrt(1 + np.log(256 / 48) / np.log(48)))
    short, long = rope.inverse_frequencies(16), rope.inverse_frequencies(16, long=True)
    assert not np.allclose(short, long)


@pytest.fixture(scope="module")
def trained(hub: LocalDirectoryHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per family: a LoRA session after 3 steps, its PEFT and merged exports, the gradient of
    one more batch, and that batch."""
    out = {}
    for family in FAMILIES:
        blobs = NoopBlobStore()
        session = JaxTrainingClient(NoopHubClient(), blobs).start_session(
            SessionConfig(str(folder_of(hub, family)), LoraConfig(rank=4, alpha=8.0, seed=3))
        )
        # Long enough for the sliding windows (8 and 24 tokens) to bind.
        data = texts(session.tokenizer, [" ".join(["the lazy dog jumps over a ship"] * 4), "a"])
        for _ in range(3):
            session.forward_backward(data)
            session.optim_step(AdamParams(learning_rate=0.05))
        root = tmp_path_factory.mktemp(family)
        peft_ref = session.save_weights_for_sampler("lora").result()
        merged_ref = session.save_merged_weights("merged").result()
        probe = texts(session.tokenizer, [" ".join(["galley rowed in rhythm"] * 4), "fox"])
        out[family] = {
            "session": session,
            "adapter": write_blobs(blobs, peft_ref.key, root / "adapter"),
            "merged": write_blobs(blobs, merged_ref.key, root / "merged"),
            "output": session.forward_backward(probe).result(),
            "grads": nnx.to_flat_state(session._grads),  # white-box: the LoRA gradient
            "probe": probe,
            "blobs": blobs,
            "peft_ref": peft_ref,
        }
    return out


def peft_loss(model: Any, data: list[Datum]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for d in data:
        logits = model(torch.tensor([d.model_input.to_ints()])).logits[0].double()
        targets = torch.tensor(d.loss_fn_inputs["target_tokens"].tolist())[:, None]
        logp = torch.log_softmax(logits, -1).gather(1, targets)[:, 0]
        weights = torch.tensor(d.loss_fn_inputs["weights"].tolist(), dtype=torch.float64)
        total = total - (logp * weights).sum()
    return total


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_loss_and_gradients_after_three_steps_match_peft(
    hub: LocalDirectoryHub, trained: dict[str, Any], family: str
) -> None:
    """The PEFT export loads in ``peft`` (Phi-3's under qkv_proj and gate_up_proj); the next
    batch's loss and every LoRA gradient equal PEFT's."""
    run = trained[family]
    config = json.loads((run["adapter"] / "adapter_config.json").read_text())
    attention = {f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    targets = {
        "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"},
        "qwen2_moe": {*attention, *(f"mlp.shared_expert.{n}" for n in MLP), "lm_head"},
        "qwen3_moe": {*attention, "lm_head"},
        "mixtral": {*attention, "lm_head"},
    }.get(family, {"q_proj", "k_proj", "v_proj", "o_proj", *MLP, "lm_head"})
    assert set(config["target_modules"]) == targets
    if family in MOE:  # each expert's gate-up and down, in PEFT's stacked-experts layout
        experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
        assert config["target_parameters"] == experts
    model = PeftModel.from_pretrained(
        hf_model(folder_of(hub, family)), run["adapter"], is_trainable=True
    )
    total = peft_loss(model, run["probe"])
    total.backward()

    assert run["output"].metrics["loss:sum"] == pytest.approx(float(total.detach()), rel=1e-5)
    torch_grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    names = read_config(folder_of(hub, family)).family.names
    compared = 0
    for path, variable in run["grads"]:
        ours = np.asarray(variable[...])
        if "experts" in path:  # [E, in, r] and [E, r, out] in PEFT's layout
            kind, which = path[-1].rsplit("_lora_", 1)
            module = (
                f"model.layers.{path[1]}.mlp.experts.{'base_layer.' if kind == 'gate_up' else ''}"
            )
            name = f"base_model.model.{module}lora_{which.upper()}.default.weight"
            e, r = ours.shape[0], ours.shape[2] if which == "a" else ours.shape[1]
            ours = (
                ours.transpose(0, 2, 1).reshape(e * r, -1).T
                if which == "a"
                else ours.transpose(2, 1, 0).reshape(-1, r * e).T
            )
        else:
            which = "A" if path[-1] == "lora_a" else "B"
            name = f"base_model.model.{names.module(path[:-1])}.lora_{which}.default.weight"
        expected = torch_grads[name]
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(ours, expected.T, atol=1e-4 * scale, err_msg=name)
        compared += 1
    assert compared == len(torch_grads) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_loads_in_transformers_with_the_sessions_logprobs(
    trained: dict[str, Any], family: str
) -> None:
    run = trained[family]
    datum = run["probe"][0]
    ours = np.concatenate(list(run["session"].forward([datum]).result().logprobs))
    with torch.no_grad():
        logits = hf_model(run["merged"])(torch.tensor([datum.model_input.to_ints()])).logits[0]
    targets = torch.tensor(datum.loss_fn_inputs["target_tokens"].tolist())[:, None]
    theirs = torch.log_softmax(logits, -1).gather(1, targets)[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_sampling_matches_generate_for_32_tokens(
    hub: LocalDirectoryHub, trained: dict[str, Any], family: str
) -> None:
    """From the base model and from the trained adapter (against its merged export), two
    prompts in one batch: the windows bind over these lengths; for Phi-3 one prompt sits
    beyond its original context of 48 positions (long factors) and one within it."""
    completer = JaxCompleter(hub, trained[family]["blobs"], model=f"tiny/{family}")
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    prompts = [" ".join(["numbers 0 1 2 3 4 5 6 7 8 9"] * 4), "the quick brown fox"]
    refs = {
        folder_of(hub, family): None,
        trained[family]["merged"]: ModelRef(f"tiny/{family}", trained[family]["peft_ref"]),
    }
    for folder, ref in refs.items():
        model = hf_model(folder)
        completions = completer.complete_batch(prompts, params, model=ref)
        assert len(completions[0].prompt_tokens) > 48 >= len(completions[1].prompt_tokens) + 32
        for completion in completions:
            prompt = list(completion.prompt_tokens)
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=1,
                pad_token_id=2,
            )
            assert list(completion.sequences[0].tokens) == out[0, len(prompt) :].tolist()


def test_sampling_across_longropes_switch_is_refused(hub: LocalDirectoryHub) -> None:
    """HF re-encodes its cache when a Phi-3 sequence outgrows the original context; galley's
    sampler does not, so a request that would cross it is refused, naming the limit."""
    completer = JaxCompleter(hub, NoopBlobStore(), model="tiny/phi3")
    with pytest.raises(ValidationError, match=r"original context \(48 positions\)"):
        completer.complete("the quick brown fox", SamplingParams(max_tokens=60))


def gemma3_config(**changes: Any) -> dict[str, Any]:
    base = {
        "model_type": "gemma3_text",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "head_dim": 4,
        "sliding_window": 512,
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "query_pre_attn_scalar": 4,
    }
    return {**base, **changes}


def test_old_gemma3_configs_read_as_new_ones() -> None:
    """Configs written before ``layer_types`` and per-kind rope parameters: five sliding
    layers to one global, the local base from ``rope_local_base_freq``."""
    cfg = parse_config(gemma3_config())
    assert cfg.windows == (512, 512, 512, 512, 512, None)
    assert cfg.rope.theta == 1e6 and cfg.rope_local is not None and cfg.rope_local.theta == 1e4
    assert parse_config(gemma3_config(sliding_window_pattern=2)).windows[:2] == (512, None)


QWEN3_MOE = {
    "model_type": "qwen3_moe",
    "sliding_window": None,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 8,
}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ({"hidden_activation": "relu"}, "hidden_activation"),
        ({"sliding_window": None}, "sliding_window"),
        ({"layer_types": ["full_attention"] * 5}, "layer_types"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
        (
            {"model_type": "phi3", "partial_rotary_factor": 0.75, "sliding_window": None},
            "partial_rotary_factor",
        ),
        (
            {
                "model_type": "phi3",
                "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]},
                "max_position_embeddings": 256,
                "original_max_position_embeddings": 64,
                "sliding_window": None,
            },
            "rope_scaling",
        ),
        *(
            ({**QWEN3_MOE, key: value}, key)
            for key, value in [
                ("mlp_only_layers", [0]),
                ("decoder_sparse_step", 2),
                ("router_jitter_noise", 0.01),
                ("num_experts_per_tok", 5),
            ]
        ),
    ],
)
def test_a_feature_galley_cannot_run_is_refused_by_its_key(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        parse_config(gemma3_config(**changes))


def test_layers_of_different_kinds_still_scan_and_remat(hub: LocalDirectoryHub) -> None:
    """Gemma 3's sliding and global layers differ only in data (whether the layer slides,
    which rope it reads), so they stack for ``scan_layers`` and train to the same losses
    under remat as unrolled; and ``galley serve`` offers the model with its context."""
    from galley.adapters.serve.model_facts import ModelFacts

    folder = str(folder_of(hub, "gemma3"))
    runs = []
    for options in ({}, {"scan_layers": True, "remat": "full"}):
        session = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), **options).start_session(
            SessionConfig(folder, LoraConfig(rank=4, seed=1))
        )
        data = texts(session.tokenizer, ["the lazy dog jumps over a ship " * 4, "a b"])
        losses = []
        for _ in range(2):
            losses.append(session.forward_backward(data).result().metrics["loss:sum"])
            session.optim_step(AdamParams(learning_rate=0.01))
        runs.append(losses)
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)
    assert runs[0][1] < runs[0][0]
    (offered,) = ModelFacts(hub).capabilities(["tiny/gemma3"]).supported_models
    assert offered.model_name == "tiny/gemma3" and offered.max_context_length == 256


MOE_MESH_SCRIPT = """
import json, sys
import jax, numpy as np
from galley.adapters.jax import JaxCompleter, JaxTrainingClient
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.plan import plan_memory
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SamplingParams, SessionConfig

folder, out = sys.argv[1], {}
GREEDY = SamplingParams(max_tokens=10, temperature=0.0)
texts = ["the quick brown fox", "jumps over", "the lazy dog", "a galley", "rowed", "numbers 0 1"]
meshes = {"one": {"data": 1}, "fsdp": {"fsdp": 4}, "fsdp x tensor": {"fsdp": 2, "tensor": 2}}
for name, mesh in meshes.items():
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), mesh=MeshShape(**mesh))
    s = client.start_session(SessionConfig(folder, LoraConfig(rank=4)))
    ids = [s.tokenizer.encode(t) for t in texts]
    data = [Datum.from_tokens(i, [1.0] * len(i)) for i in ids]
    losses, balance = [], []
    for _ in range(3):
        metrics = s.forward_backward(data).result().metrics
        losses.append(metrics["loss:sum"]); balance.append(metrics["router_balance_loss:mean"])
        s.optim_step(AdamParams(learning_rate=1e-2)).result()
    experts = s._frozen["layers"][0]["mlp"]["experts"]["gate_up"][...]
    plan = plan_memory(s.model_config, LoraConfig(rank=4), dtype=np.float32,
                       mesh=MeshShape(**mesh), devices=4, rows=6, length=32)
    resident = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(s._frozen))
    c = JaxCompleter(NoopHubClient(), NoopBlobStore(), model=folder, mesh=MeshShape(**mesh))
    out[name] = {
        "losses": losses, "balance": balance,
        "experts_share": experts.addressable_shards[0].data.size / experts.size,
        "frozen_planned": plan.frozen_weights, "frozen_resident": resident,
        "greedy": c.complete("the quick", GREEDY).sequences[0].tokens,
    }
print(json.dumps(out))
"""


def test_experts_split_over_four_devices_train_as_one_device(hub: LocalDirectoryHub) -> None:
    """Qwen3-MoE on 4 CPU devices, its experts split by expert over fsdp (one each), then by
    width over tensor too: the losses equal one device's, each device holds its share of the
    experts (as ``galley plan`` counts them), and greedy sampling on the mesh gives one
    device's tokens. The router's balance loss is reported every step."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    runs = run_python(MOE_MESH_SCRIPT, str(folder_of(hub, "qwen3_moe")), env=env)
    one = runs["one"]
    for name, share in (("fsdp", 1 / 4), ("fsdp x tensor", 1 / 4)):
        np.testing.assert_allclose(runs[name]["losses"], one["losses"], rtol=1e-5)
        np.testing.assert_allclose(runs[name]["balance"], one["balance"], rtol=1e-5)
        assert runs[name]["experts_share"] == share
        assert runs[name]["frozen_planned"] == runs[name]["frozen_resident"]
        assert runs[name]["greedy"] == one["greedy"]
    assert one["experts_share"] == 1 and one["frozen_planned"] == one["frozen_resident"]
    assert one["losses"][-1] < one["losses"][0] and all(b >= 1.0 for b in one["balance"])


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_the_routers_balance_loss_is_hfs_and_its_coefficient_adds_it(
    hub: LocalDirectoryHub, family: str
) -> None:
    """``router_balance_loss:mean`` equals transformers' ``aux_loss`` over the same padded
    batch (real tokens only); ``router_aux_loss_coef`` adds coef x balance x tokens."""
    folder = str(folder_of(hub, family))
    plain = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    weighted = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), router_aux_loss_coef=0.5)
    sessions = [
        c.start_session(SessionConfig(folder, LoraConfig(rank=4))) for c in (plain, weighted)
    ]
    data = texts(sessions[0].tokenizer, ["the quick brown fox jumps over the lazy dog", "a ship"])
    without, added = (s.forward_backward(data).result().metrics for s in sessions)
    ids = [d.model_input.to_ints() for d in data]
    width = max(map(len, ids))
    tokens = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    with torch.no_grad():
        theirs = hf_model(Path(folder))(tokens, attention_mask=mask, output_router_logits=True)
    balance = without["router_balance_loss:mean"]
    assert balance == pytest.approx(float(theirs.aux_loss), rel=1e-5)
    n = sum(map(len, ids))
    assert added["loss:sum"] - without["loss:sum"] == pytest.approx(0.5 * balance * n, rel=1e-4)
