"""What the benchmarks share: the benchmark model, and running frameworks in alternating
child processes (so each one's peak memory is its own and neither warms the other's caches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: tests.hf_models must import

# The benchmark model: a random Llama-architecture decoder.
ARCH = {
    "vocab_size": 8192,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


def make_model(folder: Path, arch: dict[str, Any] | None = None) -> None:
    """Save a seeded random Llama model (and a small tokenizer) as an HF folder."""
    import torch
    import transformers

    from tests.hf_models import write_tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**(arch or ARCH), bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    write_tokenizer(folder, 400)


def run_child(script: str, args: list[str], threads: int) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter; its last stdout line is JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def matmul_peak_gflops() -> float:
    """This machine's fp32 matmul peak, as the best of five 2048^3 numpy matmuls."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
