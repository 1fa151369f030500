"""How galley-JAX training throughput scales with sequence length and LoRA rank, and where
the time goes.

    python tests/benchmarks/bench_scaling.py [--steps 2]

The train benchmark's model, batch 8: lengths 128/256/512/1024 at rank 16, and ranks 8/16/64
at length 256. Per configuration: ``forward`` alone, ``forward_backward``, and ``optim_step``
timed separately (medians after a compiling warm-up), full-step tokens/s, and the FLOP shares
of attention and of the LM head in the step, to read the timings against. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

import numpy as np

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
from tests.benchmarks.common import ARCH, make_model

BATCH = 8
CONFIGS = [(128, 16), (256, 16), (512, 16), (1024, 16), (256, 8), (256, 64)]


def flop_shares(length: int) -> tuple[float, float]:
    """(attention, LM head) shares of a LoRA step's FLOPs (forward + activation backward)."""
    h, i, v, layers = (
        ARCH[k] for k in ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers")
    )
    kv = h * ARCH["num_key_value_heads"] // ARCH["num_attention_heads"]
    dense = layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    attention = layers * 2 * length * h  # QK^T and PV, causal half, per token
    total = dense + h * v + attention
    return attention / total, h * v / total


def measure(
    client: JaxTrainingClient, folder: Path, length: int, rank: int, steps: int
) -> dict[str, Any]:
    session = client.start_session(
        SessionConfig(str(folder), LoraConfig(rank=rank, alpha=2.0 * rank, train_unembed=False))
    )
    rows = np.random.default_rng(length).integers(2, ARCH["vocab_size"], (BATCH, length + 1))
    data = [Datum.from_tokens(r.tolist(), [1.0] * (length + 1)) for r in rows]
    times: dict[str, list[float]] = {"forward": [], "forward_backward": [], "optim_step": []}
    for i in range(steps + 1):
        for name, call in (
            ("forward", lambda: session.forward(data).result()),
            ("forward_backward", lambda: session.forward_backward(data).result()),
            ("optim_step", lambda: session.optim_step(AdamParams(learning_rate=1e-4)).result()),
        ):
            start = time.perf_counter()
            call()
            if i:  # the first round compiles
                times[name].append(time.perf_counter() - start)
    session.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    attention, head = flop_shares(length)
    step = med["forward_backward"] + med["optim_step"]
    return {
        "length": length,
        "rank": rank,
        "tokens_per_s": round(BATCH * length / step, 1),
        "forward_s": round(med["forward"], 4),
        "forward_backward_s": round(med["forward_backward"], 4),
        "optim_step_s": round(med["optim_step"], 4),
        "attention_flop_share": round(attention, 3),
        "lm_head_flop_share": round(head, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="galley-bench-")) / "model"
    make_model(folder)
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    results = [measure(client, folder, n, r, args.steps) for n, r in CONFIGS]
    print(f"batch {BATCH}; seconds are medians of {args.steps} steps")
    header = (
        "length",
        "rank",
        "tokens/s",
        "fwd s",
        "fwd+bwd s",
        "optim s",
        "attn FLOPs",
        "head FLOPs",
    )
    print("".join(f"{h:>11}" for h in header))
    for r in results:
        print(
            f"{r['length']:>11}{r['rank']:>11}{r['tokens_per_s']:>11,.0f}{r['forward_s']:>11.3f}"
            f"{r['forward_backward_s']:>11.3f}{r['optim_step_s']:>11.4f}"
            f"{r['attention_flop_share']:>11.1%}{r['lm_head_flop_share']:>11.1%}"
        )
    print(json.dumps({"benchmark": "scaling", "batch": BATCH, "results": results}))


if __name__ == "__main__":
    main()
