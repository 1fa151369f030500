"""Compile time against depth, scanned over layers and unrolled.

    python tests/benchmarks/bench_scan.py

The train benchmark's model shapes (random Llama, hidden 512, vocab 8192) at 4 and 16 layers,
LoRA r16, batch 8 x 256: the time to lower and compile one ``forward_backward_step`` and one
``optim_step``, each model and layout in a fresh process's compiler caches (a new model shape
compiles anew). The target: scanned, 16 layers compile within 1.5x of 4. Prints a table and
one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

import dataclasses

import jax
import numpy as np

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.steps import hyper_arrays, optim_step
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
from tests.benchmarks.common import PRESETS, make_model
from tests.jax_steps import lowered_step

DEPTHS = (4, 16)


def compile_seconds(folder: Path, *, scan: bool) -> float:
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), scan_layers=scan)
    session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=16)))
    preset = PRESETS["cpu"]
    rows = np.random.default_rng(0).integers(2, 8192, (preset.batch, preset.length + 1))
    data = [Datum.from_tokens(r.tolist(), [1.0] * len(r)) for r in rows]
    start = time.perf_counter()
    lowered_step(session, data).compile()
    optim_step.lower(
        session._trainable,
        session._opt_state,
        session._grads,
        hyper_arrays(AdamParams()),
        session._pins,
    ).compile()
    return time.perf_counter() - start


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="galley-scan-"))
    base = PRESETS["cpu"]
    times: dict[str, dict[int, float]] = {"scanned": {}, "unrolled": {}}
    for depth in DEPTHS:
        preset = dataclasses.replace(base, arch={**base.arch, "num_hidden_layers": depth})
        folder = root / f"layers-{depth}"
        make_model(folder, preset)
        if depth == DEPTHS[0]:
            compile_seconds(folder, scan=True)  # warm-up: the process's first compile costs more
        for layout, by_depth in times.items():
            jax.clear_caches()
            by_depth[depth] = compile_seconds(folder, scan=layout == "scanned")
    print(f"{'layout':<10}" + "".join(f"{f'{d} layers':>12}" for d in DEPTHS) + f"{'ratio':>8}")
    ratios = {}
    for layout, by_depth in times.items():
        ratios[layout] = by_depth[DEPTHS[-1]] / by_depth[DEPTHS[0]]
        cells = "".join(f"{by_depth[d]:>11.2f}s" for d in DEPTHS)
        print(f"{layout:<10}{cells}{ratios[layout]:>7.2f}x")
    print(f"target: scanned {DEPTHS[-1]} layers within 1.5x of {DEPTHS[0]}: ", end="")
    print("met" if ratios["scanned"] <= 1.5 else "missed")
    print(json.dumps({"compile_s": times, "ratio": ratios}))


if __name__ == "__main__":
    main()
