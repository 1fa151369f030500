"""Train throughput: galley's JAX adapter vs transformers + PEFT on the same machine.

    python tests/benchmarks/bench_train.py [--steps 8] [--rounds 3] [--threads 2]

Same random Llama-architecture model (hidden 512, 8 layers, 8 heads / 4 KV heads, MLP 1376,
vocab 8192), same batch (8 x 256 tokens), LoRA rank 16 on every linear projection, AdamW.
Each framework runs in its own process (so peak RSS is its own), alternating, ``--rounds``
times; a round reports the median tokens/s of its timed steps after a warm-up step. Prints a
table and one JSON line with the medians, the ratio, model-FLOPs utilisation against this
machine's measured fp32 matmul peak, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script
from tests.benchmarks.common import (
    ARCH,
    make_model,
    matmul_peak_gflops,
    peak_rss_mb,
    run_child,
)

BATCH, LENGTH, RANK = 8, 256, 16


def batch_tokens() -> Any:
    import numpy as np

    return np.random.default_rng(0).integers(2, ARCH["vocab_size"], (BATCH, LENGTH + 1))


def run_galley(folder: Path, steps: int) -> list[float]:
    from galley.adapters.jax import JaxTrainingClient
    from galley.adapters.noop import NoopBlobStore, NoopHubClient
    from galley.core import AdamParams, Datum, LoraConfig, SessionConfig

    session = JaxTrainingClient(
        NoopHubClient(), NoopBlobStore(), length_buckets=(LENGTH,)
    ).start_session(
        SessionConfig(str(folder), LoraConfig(rank=RANK, alpha=32, train_unembed=False))
    )
    data = [Datum.from_tokens(row.tolist(), [1.0] * (LENGTH + 1)) for row in batch_tokens()]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        session.forward_backward(data)
        session.optim_step(AdamParams(learning_rate=1e-4)).result()
        times.append(time.perf_counter() - start)
    return times


def run_torch(folder: Path, steps: int) -> list[float]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=32, target_modules=targets, lora_dropout=0.0)
    )
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-4,
        betas=(0.9, 0.95),
        eps=1e-12,
        weight_decay=0.0,
    )
    tokens = torch.tensor(batch_tokens())
    inputs, targets_ = tokens[:, :-1], tokens[:, 1:]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets_.reshape(-1), reduction="sum"
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def model_flops_per_step() -> float:
    """LoRA training FLOPs: forward (2N per token) + backward through activations (2N), where
    N counts every weight matmul incl. the LM head, plus attention scores both ways."""
    h, i, v, layers = (
        ARCH["hidden_size"],
        ARCH["intermediate_size"],
        ARCH["vocab_size"],
        ARCH["num_hidden_layers"],
    )
    kv = h * ARCH["num_key_value_heads"] // ARCH["num_attention_heads"]
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v
    attention = layers * 4 * LENGTH * h  # QK^T and PV per token, forward
    return BATCH * LENGTH * (4 * n + 2 * attention)


def child(framework: str, folder: str, steps: int) -> None:
    times = (run_galley if framework == "galley" else run_torch)(Path(folder), steps)
    timed = times[1:]
    peak_mb = peak_rss_mb()
    print(
        json.dumps(
            {"first_step_s": times[0], "step_s": statistics.median(timed), "peak_mb": peak_mb}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "FOLDER"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.steps)
        return
    folder = Path(tempfile.mkdtemp(prefix="galley-bench-")) / "model"
    make_model(folder)
    results: dict[str, list[dict[str, float]]] = {"galley": [], "torch": []}
    for _ in range(args.rounds):
        for framework in ("galley", "torch"):
            child_args = ["--steps", str(args.steps), "--child", framework, str(folder)]
            results[framework].append(run_child(__file__, child_args, args.threads))
    tokens = BATCH * LENGTH
    peak = matmul_peak_gflops()
    flops = model_flops_per_step()
    summary: dict[str, Any] = {
        "benchmark": "train",
        "batch": BATCH,
        "length": LENGTH,
        "lora_rank": RANK,
        "matmul_peak_gflops": round(peak, 1),
    }
    print(f"{'':16}{'tokens/s':>10}{'step s':>9}{'first step s':>14}{'MFU':>8}{'peak MB':>9}")
    for framework, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        first = statistics.median(r["first_step_s"] for r in runs)
        mem = max(r["peak_mb"] for r in runs)
        mfu = flops / step / 1e9 / peak
        print(
            f"{framework:16}{tokens / step:>10,.0f}{step:>9.3f}"
            f"{first:>14.2f}{mfu:>8.1%}{mem:>9,.0f}"
        )
        summary[framework] = {
            "tokens_per_s": round(tokens / step, 1),
            "step_s": round(step, 4),
            "first_step_s": round(first, 2),
            "mfu": round(mfu, 4),
            "peak_mb": round(mem),
        }
    summary["ratio_galley_over_torch"] = round(
        summary["galley"]["tokens_per_s"] / summary["torch"]["tokens_per_s"], 3
    )
    print(f"galley / transformers+peft: {summary['ratio_galley_over_torch']:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
