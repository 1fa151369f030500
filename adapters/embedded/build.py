"""Rebuild the embedded model and dataset: ``python -m galley.adapters.embedded.build``.

1. A byte-level tokenizer (every character is a token, so skills generalise to new words).
2. A randomly initialised Llama-style model written in HF format (numpy + safetensors).
3. Pretraining with galley's own JAX TrainingClient (full fine-tuning) on the corpus.
4. The merged weights exported as an HF folder into ``models/galley/tiny-lm``, the
   instruction dataset into ``datasets/galley/tiny-instruct`` and the preference dataset into
   ``datasets/galley/tiny-prefs`` (``--datasets-only`` writes the datasets alone).
Deterministic for a given seed on a given machine.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from galley.adapters.embedded import (
    DATASETS,
    DEFAULT_DATASET,
    DEFAULT_MODEL,
    MODELS,
    PREFERENCE_DATASET,
)
from galley.adapters.embedded.corpus import (
    instruction_rows,
    preference_rows,
    pretraining_lines,
    split_words,
)
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.jax import JaxTrainingClient, JaxTrainingSession
from galley.core import AdamParams, Datum, LoraConfig, LRSchedule, SessionConfig

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
ARCH: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "torch_dtype": "float32",
}


def write_tokenizer(folder: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + len(SPECIALS), special_tokens=SPECIALS, initial_alphabet=alphabet
    )
    tok.train_from_iterator(["galley"], trainer)  # no merges: one token per byte
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "add_bos_token": True,
        "model_max_length": 512,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok


def special_id(tok: Tokenizer, token: str) -> int:
    found = tok.token_to_id(token)
    if found is None:
        raise ValueError(f"tokenizer has no {token!r}")
    return int(found)


def write_initial_model(folder: Path, vocab: int, bos: int, eos: int, seed: int) -> None:
    cfg = {
        **ARCH,
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    rng = np.random.default_rng(seed)
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": normal(vocab, h),
        "model.norm.weight": np.ones(h, np.float32),
    }
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        tensors |= {
            f"{p}.self_attn.q_proj.weight": normal(q, h),
            f"{p}.self_attn.k_proj.weight": normal(kv, h),
            f"{p}.self_attn.v_proj.weight": normal(kv, h),
            f"{p}.self_attn.o_proj.weight": normal(h, q) / math.sqrt(2 * cfg["num_hidden_layers"]),
            f"{p}.mlp.gate_proj.weight": normal(i, h),
            f"{p}.mlp.up_proj.weight": normal(i, h),
            f"{p}.mlp.down_proj.weight": normal(h, i) / math.sqrt(2 * cfg["num_hidden_layers"]),
            f"{p}.input_layernorm.weight": np.ones(h, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(h, np.float32),
        }
    save_file(tensors, str(folder / "model.safetensors"))


def packed_batches(
    tok: Tokenizer, lines: list[str], length: int, bos: int, eos: int
) -> list[list[int]]:
    """Lines as BOS text EOS, concatenated and cut into sequences of length + 1 tokens."""
    stream: list[int] = []
    for line in lines:
        stream += [bos, *tok.encode(line, add_special_tokens=False).ids, eos]
    return [stream[k : k + length + 1] for k in range(0, len(stream) - length, length)]


def pretrain(
    init: Path, tok: Tokenizer, steps: int, batch: int, length: int, lr: float, seed: int
) -> tuple[JaxTrainingClient, JaxTrainingSession, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="galley-pretrain-"))
    client = JaxTrainingClient(LocalDirectoryHub(init.parent), FsspecBlobStore(str(work)))
    session = client.start_session(
        SessionConfig(str(init), LoraConfig(rank=0), seed=seed, storage_prefix="pretrain")
    )
    bos, eos = special_id(tok, "<|bos|>"), special_id(tok, "<|eos|>")
    sequences = packed_batches(tok, pretraining_lines(steps * batch * 3, seed), length, bos, eos)
    rng = np.random.default_rng(seed)
    schedule = LRSchedule(
        lr, "cosine", warmup_steps=min(100, steps // 10), total_steps=steps, min_lr_ratio=0.1
    )
    losses, started = [], time.time()
    pending = []
    for step in range(steps):
        chosen = rng.choice(len(sequences), batch, replace=False)
        data = [
            Datum.from_tokens(sequences[c], [1.0 / (batch * length)] * (length + 1)) for c in chosen
        ]
        pending.append(session.forward_backward(data))
        session.optim_step(
            AdamParams(learning_rate=schedule(step), weight_decay=0.01, grad_clip_norm=1.0)
        )
        if len(pending) > 2:
            losses.append(pending.pop(0).result().metrics["loss:sum"])
            if len(losses) % 100 == 0:
                print(
                    f"step {len(losses)}: loss {np.mean(losses[-100:]):.3f} "
                    f"({time.time() - started:.0f}s)",
                    flush=True,
                )
    losses += [f.result().metrics["loss:sum"] for f in pending]
    return client, session, losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MODELS / DEFAULT_MODEL)
    parser.add_argument("--datasets-only", action="store_true", help="keep the model")
    args = parser.parse_args()
    write_datasets(args.seed)
    if not args.datasets_only:
        build_model(args)


def build_model(args: argparse.Namespace) -> None:

    init = Path(tempfile.mkdtemp(prefix="galley-init-")) / "tiny-lm"
    init.mkdir()
    tok = write_tokenizer(init)
    write_initial_model(
        init,
        tok.get_vocab_size(),
        special_id(tok, "<|bos|>"),
        special_id(tok, "<|eos|>"),
        args.seed,
    )
    client, session, losses = pretrain(
        init, tok, args.steps, args.batch, args.length, args.lr, args.seed
    )
    ref = session.save_merged_weights("final").result()
    blobs = client.blobs
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for key in blobs.list(ref.key):
        name = key.rsplit("/", 1)[-1]
        if name != "manifest.json":
            (args.out / name).write_bytes(blobs.read(key))
    final = float(np.mean(losses[-50:]))
    readme = (
        f"# {DEFAULT_MODEL}\n\nA {ARCH['num_hidden_layers']}-layer Llama-style model "
        f"with a byte-level tokenizer, pretrained by `python -m galley.adapters.embedded.build` "
        f"({args.steps} steps of {args.batch} x {args.length} tokens, final loss {final:.3f}).\n"
    )
    (args.out / "README.md").write_text(readme)

    print(f"model written to {args.out}; final loss {np.mean(losses[-50:]):.3f}")


def write_datasets(seed: int) -> None:
    """The instruction and preference datasets, on disjoint train and test words."""
    train_words, test_words = split_words(seed)
    for name, make in ((DEFAULT_DATASET, instruction_rows), (PREFERENCE_DATASET, preference_rows)):
        dataset = DATASETS / name
        dataset.mkdir(parents=True, exist_ok=True)
        for split, words, n, offset in (
            ("train", train_words, 512, 1),
            ("test", test_words, 48, 2),
        ):
            rows = make(n, words, seed * 100 + offset)
            (dataset / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"dataset written to {dataset}")


if __name__ == "__main__":
    main()
