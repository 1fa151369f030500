"""Compile and first-step latency of the JAX adapter, and proof that steps inside a length
bucket, new hyperparameters and new sessions of the same model do not recompile.

    python tests/benchmarks/bench_compile.py
    python tests/benchmarks/bench_compile.py --preset 0.5b [--model-dir DIR]   # on a GPU
    python tests/benchmarks/bench_compile.py --compilation-cache DIR   # run twice: a rerun

The train benchmark's model (random Llama, hidden 512, 8 layers, vocab 8192), batch 8, LoRA
r16, the adapter's default length buckets. Each row is one ``forward_backward`` +
``optim_step``; "traces" counts the step functions traced (= compiled) during it. Prints a
table and one JSON line. ``--preset 0.5b``: Qwen2.5-0.5B's shapes in bfloat16, lengths 2x
longer (512 fills its bucket, 600 opens the next; bench_train reports the 1024 first step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

import numpy as np

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.steps import TRACES
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
from tests.benchmarks.common import PRESETS, Preset, model_folder

RANK = 16


def batch(preset: Preset, length: int, seed: int) -> list[Datum]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(2, preset.arch["vocab_size"], (preset.batch, length + 1))
    return [Datum.from_tokens(row.tolist(), [1.0] * (length + 1)) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model-dir", help="reuse (or make) the benchmark model here")
    parser.add_argument("--compilation-cache", help="JAX's persistent compilation cache dir")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    scale = 1 if args.preset == "cpu" else 2  # lengths 256/200/231/300, or twice those
    folder = model_folder(preset, args.model_dir)
    client = JaxTrainingClient(
        NoopHubClient(),
        NoopBlobStore(),
        dtype=preset.dtype,
        compilation_cache_dir=args.compilation_cache,
    )
    config = SessionConfig(str(folder), LoraConfig(rank=RANK, alpha=32, train_unembed=False))
    started = time.perf_counter()
    session = client.start_session(config)
    load_s = time.perf_counter() - started

    def step(session: Any, length: int, lr: float, seed: int) -> tuple[float, int]:
        return timed_step(session, batch(preset, length * scale, seed), lr)

    rows: list[tuple[str, float, int]] = []
    full = 256 * scale
    rows.append((f"first step, length {full} (compiles)", *step(session, 256, 1e-4, 0)))
    for length in (200, 231, 256):
        label = f"length {length * scale}, same bucket"
        rows.append((label, *step(session, length, 1e-4, length)))
    rows.append(("new learning rate", *step(session, 256, 3e-5, 1)))
    second = client.start_session(config)
    rows.append(("second session, same model", *step(second, 256, 1e-4, 2)))
    label = f"length {300 * scale}: next bucket (compiles)"
    rows.append((label, *step(session, 300, 1e-4, 3)))
    report(args.preset, load_s, rows)


def timed_step(session: Any, data: list[Datum], lr: float) -> tuple[float, int]:
    before = sum(TRACES.values())
    start = time.perf_counter()
    session.forward_backward(data)
    session.optim_step(AdamParams(learning_rate=lr)).result()
    return time.perf_counter() - start, sum(TRACES.values()) - before


def report(preset: str, load_s: float, rows: list[tuple[str, float, int]]) -> None:
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
                "preset": preset,
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
