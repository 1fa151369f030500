"""Compile and first-step latency of the JAX adapter, and proof that steps inside a length
bucket, new hyperparameters and new sessions of the same model do not recompile.

    python tests/benchmarks/bench_compile.py

The train benchmark's model (random Llama, hidden 512, 8 layers, vocab 8192), batch 8, LoRA
r16, the adapter's default length buckets. Each row is one ``forward_backward`` +
``optim_step``; "traces" counts the step functions traced (= compiled) during it. Prints a
table and one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

import numpy as np

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.training import TRACES
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
from tests.benchmarks.common import ARCH, make_model

BATCH, RANK = 8, 16


def batch(length: int, seed: int) -> list[Datum]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(2, ARCH["vocab_size"], (BATCH, length + 1))
    return [Datum.from_tokens(row.tolist(), [1.0] * (length + 1)) for row in rows]


def step(session: Any, length: int, lr: float, seed: int) -> tuple[float, int]:
    before = sum(TRACES.values())
    start = time.perf_counter()
    session.forward_backward(batch(length, seed))
    session.optim_step(AdamParams(learning_rate=lr)).result()
    return time.perf_counter() - start, sum(TRACES.values()) - before


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="galley-bench-")) / "model"
    make_model(folder)
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore())
    config = SessionConfig(str(folder), LoraConfig(rank=RANK, alpha=32, train_unembed=False))
    started = time.perf_counter()
    session = client.start_session(config)
    load_s = time.perf_counter() - started
    rows: list[tuple[str, float, int]] = []
    rows.append(("first step, length 256 (compiles)", *step(session, 256, 1e-4, 0)))
    for length in (200, 231, 256):
        rows.append((f"length {length}, same bucket", *step(session, length, 1e-4, length)))
    rows.append(("new learning rate", *step(session, 256, 3e-5, 1)))
    second = client.start_session(config)
    rows.append(("second session, same model", *step(second, 256, 1e-4, 2)))
    rows.append(("length 300: next bucket (compiles)", *step(session, 300, 1e-4, 3)))
    print(f"session start (load weights): {load_s:.2f} s")
    print(f"{'':38}{'seconds':>9}{'traces':>8}")
    for label, seconds, traces in rows:
        print(f"{label:38}{seconds:>9.2f}{traces:>8}")
    in_bucket = sum(t for label, _, t in rows[1:6])
    print(f"traces in steps 2-6 (same bucket, new LR, new session): {in_bucket}")
    print(
        json.dumps(
            {
                "benchmark": "compile",
                "session_start_s": round(load_s, 2),
                "first_step_s": round(rows[0][1], 2),
                "warm_step_s": round(rows[3][1], 3),
                "traces_first_step": rows[0][2],
                "traces_within_bucket_new_lr_new_session": in_bucket,
                "new_bucket_step_s": round(rows[-1][1], 2),
                "traces_new_bucket": rows[-1][2],
            }
        )
    )


if __name__ == "__main__":
    main()
