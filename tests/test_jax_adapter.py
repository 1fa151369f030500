"""The JAX TrainingClient against the reference users trust: transformers + peft on CPU."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from peft import PeftModel
from safetensors import safe_open

from galley.adapters.hf.model_files import SafetensorsReader
from galley.adapters.jax import JaxCompleter, JaxTrainingClient
from galley.adapters.jax.build import build_model
from galley.adapters.jax.config import parse_config, read_config
from galley.adapters.jax.steps import TRACES
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.adapters.testing import TrainingClientContract
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


def causal_mask(length: int) -> jax.Array:
    """An explicit causal mask: exercises the general (masked) attention path."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None]


FAMILIES = [("llama", False), ("qwen2", True), ("qwen3", False), ("mistral", False)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {
        f"{fam}{'-tied' if tie else ''}": make_model(root / fam, fam, tie=tie)
        for fam, tie in FAMILIES
    }
    out["llama3-rope"] = make_model(
        root / "llama3",
        "llama",
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    return out


def hf_logits(folder: Path, tokens: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("name", ["llama", "qwen2-tied", "qwen3", "mistral", "llama3-rope"])
def test_logits_match_transformers(models: dict[str, Path], name: str) -> None:
    folder = models[name]
    cfg = read_config(folder)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 40))
    model = build_model(cfg, SafetensorsReader(folder), None)
    logits, _ = model(
        jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(40), (2, 40)), causal_mask(40)
    )
    ref = hf_logits(folder, tokens)
    assert ref.std() > 1.0  # logits spread over several nats: a wrong model would show
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-4


@pytest.mark.parametrize("name", ["llama", "qwen2-tied", "qwen3"])
@pytest.mark.parametrize("length", [5, 40])  # 2 x 5 rows: the few-row products; 80: matmuls
def test_sampling_layout_matches_transformers(
    models: dict[str, Path], name: str, length: int
) -> None:
    """The Completer's model: [out, in] kernels, q/k/v and gate/up stacked (with qkv biases
    for Qwen2, a tied head), and broadcast multiply-and-sum for few rows."""
    folder = models[name]
    cfg = read_config(folder)
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, length))
    model = build_model(cfg, SafetensorsReader(folder), None, sampling_layout=True)
    assert model.layers[0].self_attn.k_proj is None and model.layers[0].mlp.up_proj is None
    positions = jnp.broadcast_to(jnp.arange(length), (2, length))
    logits, _ = model(jnp.asarray(tokens), positions, causal_mask(length))
    assert np.abs(np.asarray(logits) - hf_logits(folder, tokens)).max() <= 1e-4


@pytest.mark.parametrize("length", [40, 130, 256])
def test_causal_fast_path_matches_transformers(models: dict[str, Path], length: int) -> None:
    """Training attends with ``mask=None``: query chunks that skip the masked triangle (1, 2
    and 4 chunks at these lengths)."""
    folder = models["qwen2-tied"]
    cfg = read_config(folder)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, length))
    model = build_model(cfg, SafetensorsReader(folder), None)
    logits, _ = model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(length), (2, length)))
    assert np.abs(np.asarray(logits) - hf_logits(folder, tokens)).max() <= 1e-4


def test_old_and_new_config_formats_agree() -> None:
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 128,
    }
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    old = parse_config(
        {**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}}
    )
    new = parse_config(
        {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}}
    )
    assert old == new and old.rope.kind == "llama3" and old.num_kv_heads == 2 and old.head_dim == 4
    with pytest.raises(ValidationError, match="'gpt2' is not supported"):
        parse_config({**base, "model_type": "gpt2"})
    with pytest.raises(ValidationError, match="missing required field 'vocab_size'"):
        parse_config({k: v for k, v in base.items() if k != "vocab_size"})


def test_missing_tensor_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    for f in models["llama"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    with pytest.raises(ValidationError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        client.start_session(SessionConfig(str(folder)))


@pytest.mark.parametrize("name", ["llama", "qwen2-tied"])
def test_lora_loss_and_gradients_match_peft(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    folder, blobs = models[name], NoopBlobStore()
    session = JaxTrainingClient(NoopHubClient(), blobs).start_session(
        SessionConfig(str(folder), LoraConfig(rank=4, alpha=8.0, seed=3))
    )
    tok = session.tokenizer
    session.forward_backward(texts(tok, ["the lazy dog jumps", "a ship"]))
    session.optim_step(AdamParams(learning_rate=0.05)).result()  # B != 0 from here on
    ref = session.save_weights_for_sampler("lora").result()
    adapter_dir = write_blobs(blobs, ref.key, tmp_path / "adapter")
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4

    data = texts(tok, ["galley rowed in rhythm", "quick brown fox"])
    out = session.forward_backward(data).result()
    grads = nnx.to_flat_state(session._grads)  # white-box: the accumulated LoRA gradient

    peft_model = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(folder), adapter_dir, is_trainable=True
    )
    peft_model.eval()
    width = max(d.model_input.length for d in data)
    total = torch.zeros(())
    for d in data:
        ids = torch.tensor([d.model_input.to_ints()])
        logits = peft_model(ids).logits[0].double()
        logp = torch.log_softmax(logits, -1).gather(
            1, torch.tensor(d.loss_fn_inputs["target_tokens"].tolist())[:, None]
        )[:, 0]
        total = (
            total
            - (logp * torch.tensor(d.loss_fn_inputs["weights"].tolist(), dtype=torch.float64)).sum()
        )
    total.backward()
    assert width > 3 and out.metrics["loss:sum"] == pytest.approx(float(total.detach()), rel=1e-5)
    torch_grads = {
        n: p.grad.numpy() for n, p in peft_model.named_parameters() if p.grad is not None
    }
    compared = 0
    for path, variable in grads:
        module = "lm_head" if path[0] == "lm_head" else "model." + ".".join(map(str, path[:-1]))
        which = "lora_A" if path[-1] == "lora_a" else "lora_B"
        expected = torch_grads[f"base_model.model.{module}.{which}.default.weight"].T
        np.testing.assert_allclose(np.asarray(variable[...]), expected, rtol=2e-3, atol=2e-5)
        compared += 1
    assert compared == 2 * 7 * 2 + 2  # q,k,v,o,gate,up,down in 2 layers, plus the head


def test_merged_export_loads_in_transformers_with_the_same_logits(
    models: dict[str, Path], tmp_path: Path
) -> None:
    folder, blobs = models["qwen2-tied"], NoopBlobStore()
    session = JaxTrainingClient(NoopHubClient(), blobs).start_session(
        SessionConfig(str(folder), LoraConfig(rank=4))
    )
    data = texts(session.tokenizer, ["the quick brown fox", "jumps over"])
    for _ in range(2):
        session.forward_backward(data)
        session.optim_step(AdamParams(learning_rate=0.05))
    ref = session.save_merged_weights("merged").result()
    merged = write_blobs(blobs, ref.key, tmp_path / "merged")
    tokens = np.asarray([data[0].model_input.to_ints()])
    ours = np.concatenate(list(session.forward(data[:1]).result().logprobs))
    hf = torch.log_softmax(torch.tensor(hf_logits(merged, tokens))[0], -1)
    theirs = hf.gather(1, torch.tensor(data[0].loss_fn_inputs["target_tokens"].tolist())[:, None])[
        :, 0
    ].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert not json.loads((merged / "config.json").read_text())["tie_word_embeddings"]
    # A Completer reads the export through a temporary copy that it removes, and keeps at
    # most max_models models loaded.
    copies = lambda: set(Path(tempfile.gettempdir()).glob("galley-merged-*"))  # noqa: E731
    before = copies()
    completer = JaxCompleter(NoopHubClient(), blobs, max_models=1)
    params = SamplingParams(max_tokens=2, temperature=0.0)
    tuned = completer.complete(data[0].model_input, params, model=ModelRef(str(folder), ref))
    completer.complete(data[0].model_input, params, model=ModelRef(str(folder)))
    assert copies() == before and len(completer._models) == 1
    assert tuned.sequences[0].tokens  # it sampled from the merged weights


def test_training_drives_loss_down_and_full_finetune_trains_everything(
    models: dict[str, Path],
) -> None:
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    full = client.start_session(SessionConfig(str(models["llama"]), LoraConfig(rank=0)))
    assert full.model_info.num_trainable_parameters == full.model_info.num_parameters
    data = texts(full.tokenizer, ["the quick brown fox jumps over the lazy dog"] * 2)
    losses = []
    for _ in range(15):
        losses.append(full.forward_backward(data).result().metrics["loss:sum"])
        full.optim_step(AdamParams(learning_rate=3e-3))
    assert losses[-1] < 0.1 * losses[0]


def test_bfloat16_session_trains_float32_adapters(models: dict[str, Path], tmp_path: Path) -> None:
    """A bf16 base keeps float32 adapters: AdamW's small steps must not round away. Its
    merged export stays bf16 and loads in transformers with the session's logprobs."""
    blobs = NoopBlobStore()
    client = JaxTrainingClient(NoopHubClient(), blobs, dtype="bfloat16")
    session = client.start_session(SessionConfig(str(models["llama"]), LoraConfig(rank=4)))
    adapters = nnx.to_flat_state(session._trainable)  # white-box: the trainable state
    frozen = jax.tree.leaves(session._frozen)
    assert {v[...].dtype for _, v in adapters} == {jnp.dtype(jnp.float32)}
    assert jnp.dtype(jnp.bfloat16) in {leaf.dtype for leaf in frozen}
    before = {path: np.asarray(v[...]) for path, v in adapters}
    data = texts(session.tokenizer, ["the quick brown fox jumps over the lazy dog"] * 2)
    losses = []
    for _ in range(10):
        losses.append(session.forward_backward(data).result().metrics["loss:sum"])
        session.optim_step(AdamParams(learning_rate=1e-4)).result()  # before reading state
    after = dict(nnx.to_flat_state(session._trainable))
    # lr 1e-4 is below half a bf16 ulp of most entries of A (|A| ~ 0.1): they move only in f32.
    moved = [
        np.abs(np.asarray(after[p][...]) - before[p]).max() for p in before if p[-1] == "lora_a"
    ]
    assert min(moved) > 0 and losses[-1] < losses[0]

    ref = session.save_merged_weights("merged-bf16").result()
    merged = write_blobs(blobs, ref.key, tmp_path / "merged")
    with safe_open(str(merged / "model.safetensors"), "pt") as stored:
        assert stored.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16)
    ours = np.concatenate(list(session.forward(data[:1]).result().logprobs))
    with torch.no_grad():
        logits = hf(torch.tensor([data[0].model_input.to_ints()])).logits[0].float()
    targets = torch.tensor(data[0].loss_fn_inputs["target_tokens"].tolist())[:, None]
    theirs = torch.log_softmax(logits, -1).gather(1, targets)[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=0.1)  # bf16 kernels round differently


def test_new_lengths_in_a_bucket_do_not_recompile(models: dict[str, Path]) -> None:
    session = JaxTrainingClient(
        NoopHubClient(), NoopBlobStore(), length_buckets=(32, 64)
    ).start_session(SessionConfig(str(models["mistral"]), LoraConfig(rank=2)))
    tok = session.tokenizer
    session.forward_backward(texts(tok, ["a"])).result()
    session.optim_step(AdamParams()).result()
    before = dict(TRACES)
    for text in ["the quick", "the quick brown fox", "galley ship rowed", "numbers 0 1 2 3 4"]:
        session.forward_backward(texts(tok, [text])).result()
        session.optim_step(
            AdamParams(learning_rate=float(len(text)) * 1e-4, grad_clip_norm=1.0)
        ).result()
    assert dict(TRACES) == before  # same bucket, new lengths, new LR and clipping: no trace
    session.forward_backward(
        texts(tok, ["the quick brown fox jumps over the lazy dog " * 2])
    ).result()
    assert (
        TRACES["forward_backward"] == before["forward_backward"] + 1
    )  # the next bucket compiles once


class TestJaxTrainingClientContract(TrainingClientContract):
    folder: Path | None = None

    @pytest.fixture(autouse=True)
    def _model(self, models: dict[str, Path]) -> None:
        self.folder = models["qwen3"]

    def make_client(self, tmp_path: Path) -> tuple[JaxTrainingClient, str]:
        assert self.folder is not None
        return JaxTrainingClient(NoopHubClient(), NoopBlobStore()), str(self.folder)


def test_sft_workflow_runs_unchanged_on_the_jax_adapter(models: dict[str, Path]) -> None:
    from galley.adapters.noop import noop_adapters
    from galley.workflows.sft import SFTConfig, run

    blobs = NoopBlobStore()
    adapters = noop_adapters(blobs=blobs, training=JaxTrainingClient(NoopHubClient(), blobs))
    config = SFTConfig(
        base_model=str(models["llama"]),
        max_steps=12,
        batch_size=4,
        learning_rate=5e-3,
        lora_rank=8,
        eval_every=6,
        checkpoint_every=6,
        run_id="jax-sft",
        num_samples=2,
    )
    result = run(config, adapters)
    assert [m["step"] for m in result.metrics] == list(range(1, 13))
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"]
    assert result.eval[-1]["eval/nll"] < result.eval[0]["eval/nll"]
    assert [c.step for c in result.checkpoints] == [6, 12]
    assert result.sampler is not None
    assert blobs.exists(f"{result.sampler.key}/adapter_model.safetensors")


@pytest.mark.parametrize("loss", ["cross_entropy", "importance_sampling", "ppo", "cispo"])
def test_every_loss_matches_the_core_reference(models: dict[str, Path], loss: str) -> None:
    """Value and gradient of each built-in loss agree with
    galley.core.domain.losses.reference_loss."""
    from galley.core import LossFn, reference_loss

    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    session = client.start_session(SessionConfig(str(models["llama"]), LoraConfig(rank=4, seed=1)))
    session.forward_backward(texts(session.tokenizer, ["warm up the adapter"]))
    session.optim_step(AdamParams(learning_rate=0.05)).result()
    rng = np.random.default_rng(7)
    plain = texts(session.tokenizer, ["the quick brown fox", "a galley ship"])
    current = session.forward(plain).result().logprobs
    data = []
    for d, logp in zip(plain, current, strict=True):
        n = d.model_input.length
        inputs = {
            **d.loss_fn_inputs,
            "logprobs": (logp + rng.normal(0, 0.3, n)).astype(np.float32),  # a sampler that differs
            "advantages": rng.normal(0, 1, n).astype(np.float32),
        }
        data.append(Datum(d.model_input, inputs))
    config = (
        {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
        if loss in ("ppo", "cispo")
        else None
    )
    out = session.forward_backward(data, loss, config).result()
    expected = 0.0
    for d, logp in zip(data, out.logprobs, strict=True):
        inputs = {k: v.data for k, v in d.loss_fn_inputs.items()}
        expected += reference_loss(LossFn(loss), logp, inputs, config)[0]
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # The gradient equals cross entropy with weights -dL/dlogp (the linearisation identity).
    twin = client.start_session(SessionConfig(str(models["llama"]), LoraConfig(rank=4, seed=1)))
    twin.forward_backward(texts(twin.tokenizer, ["warm up the adapter"]))
    twin.optim_step(AdamParams(learning_rate=0.05)).result()
    linear = []
    for d, logp in zip(data, out.logprobs, strict=True):
        inputs = {k: v.data for k, v in d.loss_fn_inputs.items()}
        grad = reference_loss(LossFn(loss), logp, inputs, config)[1]
        linear.append(
            Datum(
                d.model_input,
                {
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "weights": (-grad).astype(np.float32),
                },
            )
        )
    twin.forward_backward(linear).result()
    for a, b in zip(jax.tree.leaves(session._grads), jax.tree.leaves(twin._grads), strict=True):
        scale = float(np.abs(np.asarray(b)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale)


def test_a_model_without_a_tokenizer_trains_on_ids_and_names_the_missing_file(
    tmp_path: Path,
) -> None:
    from galley.core import NotFoundError

    folder = make_model(tmp_path / "m", "llama")
    (folder / "tokenizer.json").unlink()
    session = JaxTrainingClient(NoopHubClient(), NoopBlobStore()).start_session(
        SessionConfig(str(folder), LoraConfig(rank=2))
    )
    out = session.forward_backward([Datum.from_tokens([0, 5, 6, 7], [0, 1, 1, 1])]).result()
    assert out.metrics["loss:sum"] > 0
    with pytest.raises(NotFoundError, match="has no tokenizer.json"):
        _ = session.tokenizer


def test_a_family_with_other_tensor_names_is_one_table(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint keeping Llama's weights under other names (``transformer.h.N...``) loads
    through a Family whose HFNames say so, computes the same logprobs, and exports under its
    own names: loading and export both read the table."""
    import shutil

    from safetensors.numpy import load, load_file, save_file

    from galley.adapters.jax import families
    from galley.adapters.jax.families import Family, HFNames
    from galley.adapters.jax.families.llama import FAMILY as LLAMA

    renamed = tmp_path / "renamed"
    shutil.copytree(models["llama"], renamed)
    tensors = load_file(str(renamed / "model.safetensors"))
    moved = {
        k.replace("model.layers.", "transformer.h.").replace("model.", "transformer."): v
        for k, v in tensors.items()
    }
    save_file(moved, str(renamed / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "model_type": "renamed"}))
    names = HFNames(
        embed="transformer.embed_tokens", norm="transformer.norm", layers="transformer.h"
    )
    table = {
        **families.families(),
        "renamed": attrs.evolve(LLAMA, model_types=("renamed",), names=names),
    }
    monkeypatch.setattr(families, "families", lambda: table)

    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    data = [Datum.from_tokens([0, 5, 6, 7, 8], [0, 1, 1, 1, 1])]
    ours = client.start_session(SessionConfig(str(renamed), LoraConfig(rank=2)))
    theirs = client.start_session(SessionConfig(str(models["llama"]), LoraConfig(rank=2)))
    for a, b in zip(
        ours.forward(data).result().logprobs, theirs.forward(data).result().logprobs, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    ref = ours.save_weights_for_sampler("final").result()
    exported = load(client.blobs.read(f"{ref.key}/adapter_model.safetensors"))
    layers = {k.split(".lora_")[0].rsplit(".", 2)[0] for k in exported if ".h." in k}
    assert layers and not any("model.layers" in k for k in exported)
    assert all(k.startswith("base_model.model.transformer.h.") for k in layers)
    assert isinstance(LLAMA, Family)
