"""Gemma 2, Gemma 3 and Phi-3 against transformers + peft on CPU, one tiny model per family
with every feature it has switched on where it changes the output (``hf_models.FEATURES``):
sliding windows shorter than the sequences, soft-capped scores and logits, Gemma 3's rope
per layer kind, Phi-3's fused projections and LongRoPE on both sides of its original
context."""

from __future__ import annotations

import json
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
from galley.adapters.jax.config import ModelConfig, parse_config, read_config
from galley.adapters.jax.model import build_model
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

FAMILIES = ["gemma2", "gemma3", "phi3"]


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


# What each family's test model switches off, one at a time: each must change the logits,
# or the equality with transformers would not show that galley runs it.
FEATURES_OFF = {
    "gemma2": {
        "windows": (None, None, None),
        "attention_softcap": None,
        "final_softcap": None,
        "query_scale": None,
    },
    "gemma3": {"windows": (None, None, None), "rope_local": None, "query_scale": None},
    "phi3": {"windows": (None, None)},
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
        for field, off in FEATURES_OFF[family].items():
            changed = logits_of(attrs.evolve(cfg, **{field: off}), folder, tokens)
            assert np.abs(changed - ref).max() > 1e-2, f"{family}: {field} changes nothing"


def test_longrope_switches_to_its_long_factors_beyond_the_original_context(
    hub: LocalDirectoryHub,
) -> None:
    cfg = read_config(folder_of(hub, "phi3"))
    rope = cfg.rope
    assert rope.kind == "longrope" and rope.original_max_position == 48
    assert rope.attention_factor == pytest.approx(np.sqrt(1 + np.log(256 / 48) / np.log(48)))
    short, long = rope.inverse_frequencies(16), rope.inverse_frequencies(16, long=True)
    assert not np.allclose(short, long)


def texts(tok: Any, samples: list[str]) -> list[Datum]:
    out = []
    for t in samples:
        ids = [tok.bos_token_id, *tok.encode(t)]
        out.append(Datum.from_tokens(ids, [0.0] + [1.0] * (len(ids) - 1)))
    return out


def write_blobs(blobs: NoopBlobStore, prefix: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key in blobs.list(prefix):
        (folder / key.rsplit("/", 1)[-1]).write_bytes(blobs.read(key))
    return folder


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
    fused = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}
    split = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    assert set(config["target_modules"]) == (fused if family == "phi3" else split)
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
        which = "lora_A" if path[-1] == "lora_a" else "lora_B"
        expected = torch_grads[f"base_model.model.{names.module(path[:-1])}.{which}.default.weight"]
        scale = float(np.abs(expected).max())

        np.testing.assert_allclose(np.asarray(variable[...]), expected.T, atol=1e-4 * scale)
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
