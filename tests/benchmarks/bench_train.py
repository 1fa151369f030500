"""Train throughput: galley's JAX adapter vs transformers + PEFT on the same machine.

    python tests/benchmarks/bench_train.py [--steps 8] [--rounds 3] [--threads 2]
    python tests/benchmarks/bench_train.py --preset 0.5b [--model-dir DIR]   # on a GPU

Same random Llama-architecture model (hidden 512, 8 layers, 8 heads / 4 KV heads, MLP 1376,
vocab 8192), same batch (8 x 256 tokens), LoRA rank 16 on every linear projection, AdamW.
Each framework runs in its own process (so peak memory is its own), alternating, ``--rounds``
times; a round reports the tokens/s of ``--steps`` steps run back to back after a warm-up step,
until the last loss is on the host; the table gives the median round. Prints a table and one JSON
line with the medians, the ratio, model-FLOPs utilisation against this machine's measured
matmul peak (fp32 on a CPU, bf16 on a GPU), and peak memory (host RSS on a CPU, the
framework's peak allocation on a GPU).

``--preset 0.5b`` is the GPU configuration: Qwen2.5-0.5B's shapes in bfloat16, batch 8 x 1024
(``common.PRESETS``); galley's LoRA adapters and PEFT's are float32 on the bf16 base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script
from tests.benchmarks.common import (
    PRESETS,
    Preset,
    device_peak_mb,
    model_folder,
    peak_gflops,
    run_child,
)

RANK = 16


def batch_tokens(preset: Preset) -> Any:
    import numpy as np

    shape = (preset.batch, preset.length + 1)
    return np.random.default_rng(0).integers(2, preset.arch["vocab_size"], shape)


def run_galley(folder: Path, steps: int, preset: Preset) -> tuple[float, float, float]:
    from galley.adapters.jax import JaxTrainingClient
    from galley.adapters.noop import NoopBlobStore, NoopHubClient
    from galley.core import AdamParams, Datum, LoraConfig, SessionConfig

    session = JaxTrainingClient(
        NoopHubClient(), NoopBlobStore(), dtype=preset.dtype, length_buckets=(preset.length,)
    ).start_session(
        SessionConfig(str(folder), LoraConfig(rank=RANK, alpha=32, train_unembed=False))
    )
    weights = [1.0] * (preset.length + 1)
    data = [Datum.from_tokens(row.tolist(), weights) for row in batch_tokens(preset)]

    def step() -> Any:
        loss = session.forward_backward(data)
        return loss, session.optim_step(AdamParams(learning_rate=1e-4))

    def wait(futures: Any) -> float:
        futures[1].result()
        return float(futures[0].result().metrics["loss:sum"])

    return timed_steps(step, wait, steps)


def timed_steps(step: Any, wait: Any, steps: int) -> tuple[float, float, float]:
    """(first step's seconds, mean seconds of the next ``steps``, first step's loss). Timed
    steps run back to back as a training loop would, each framework queueing work as it does;
    the clock stops when the last step's results are in."""
    start = time.perf_counter()
    first_loss = wait(step())
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        last = step()
    wait(last)
    return first, (time.perf_counter() - start) / steps, first_loss


def run_torch(folder: Path, steps: int, preset: Preset) -> tuple[float, float, float]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, preset.dtype)
    ).to(device)
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
    tokens = torch.tensor(batch_tokens(preset), device=device)
    inputs, targets_ = tokens[:, :-1], tokens[:, 1:]

    def step() -> Any:
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets_.reshape(-1), reduction="sum"
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def wait(loss: Any) -> float:
        value = float(loss.item())
        if device == "cuda":
            torch.cuda.synchronize()  # the optimizer step, queued after the loss
        return value

    return timed_steps(step, wait, steps)


def model_flops_per_step(preset: Preset) -> float:
    """LoRA training FLOPs: forward (2N per token) + backward through activations (2N), where
    N counts every weight matmul incl. the LM head, plus attention scores both ways."""
    arch = preset.arch
    h, i, v = arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"]
    layers = arch["num_hidden_layers"]
    kv = h * arch["num_key_value_heads"] // arch["num_attention_heads"]
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v
    attention = layers * 4 * preset.length * h  # QK^T and PV per token, forward
    return preset.batch * preset.length * (4 * n + 2 * attention)


def child(framework: str, folder: str, steps: int, preset: Preset) -> None:
    runner = run_galley if framework == "galley" else run_torch
    first, step, loss = runner(Path(folder), steps, preset)
    peak = device_peak_mb(framework)
    result = {"first_step_s": first, "step_s": step, "peak_mb": peak, "first_loss": loss}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model-dir", help="reuse (or make) the benchmark model here")
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "FOLDER"))
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.child:
        child(args.child[0], args.child[1], args.steps, preset)
        return
    folder = model_folder(preset, args.model_dir)
    results: dict[str, list[dict[str, float]]] = {"galley": [], "torch": []}
    for _ in range(args.rounds):
        for framework in ("galley", "torch"):
            child_args = ["--steps", str(args.steps), "--preset", args.preset]
            child_args += ["--child", framework, str(folder)]
            results[framework].append(run_child(__file__, child_args, args.threads))
    tokens = preset.batch * preset.length
    peak, peak_kind = peak_gflops()
    flops = model_flops_per_step(preset)
    summary: dict[str, Any] = {
        "benchmark": "train",
        "preset": args.preset,
        "dtype": preset.dtype,
        "batch": preset.batch,
        "length": preset.length,
        "lora_rank": RANK,
        "matmul_peak_gflops": round(peak, 1),
        "peak_kind": peak_kind,
    }
    print(f"matmul peak ({peak_kind}): {peak:,.0f} GFLOP/s")
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
            "first_loss": runs[0]["first_loss"],
        }
    summary["ratio_galley_over_torch"] = round(
        summary["galley"]["tokens_per_s"] / summary["torch"]["tokens_per_s"], 3
    )
    print(f"galley / transformers+peft: {summary['ratio_galley_over_torch']:.2f}x")
    losses = summary["galley"]["first_loss"], summary["torch"]["first_loss"]
    summary["first_loss_relative_difference"] = abs(losses[0] - losses[1]) / abs(losses[1])
    print(
        f"first-step loss (same model, same batch): galley {losses[0]:,.1f}, torch {losses[1]:,.1f}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
