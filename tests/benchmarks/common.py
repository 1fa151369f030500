"""What the benchmarks share: the benchmark model, and running frameworks in alternating
child processes (so each one's peak memory is its own and neither warms the other's caches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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

# The GPU configuration (~0.5B): Qwen2.5-0.5B's shapes (494M parameters, q/k/v biases, tied
# 151,936-entry head), random weights, in bfloat16.
ARCH_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Preset:
    """What a benchmark runs: the model, its family and dtype, and the training batch."""

    arch: dict[str, Any]
    family: str
    dtype: str
    batch: int
    length: int


PRESETS = {
    "cpu": Preset(ARCH, "llama", "float32", 8, 256),
    "0.5b": Preset(ARCH_05B, "qwen2", "bfloat16", 8, 1024),
}


def make_model(folder: Path, preset: Preset = PRESETS["cpu"]) -> None:
    """Save a seeded random model of ``preset`` (and a small tokenizer) as an HF folder."""
    import torch
    import transformers

    from tests.hf_models import write_tokenizer

    torch.manual_seed(0)
    config_class = (
        transformers.Qwen2Config if preset.family == "qwen2" else transformers.LlamaConfig
    )
    config = config_class(**preset.arch, bos_token_id=0, eos_token_id=1)
    model_class = (
        transformers.Qwen2ForCausalLM if preset.family == "qwen2" else transformers.LlamaForCausalLM
    )
    model_class(config).to(getattr(torch, preset.dtype)).save_pretrained(folder)
    write_tokenizer(folder, 400)


def model_folder(preset: Preset, given: str | None) -> Path:
    """``given`` (made on first use, so several benchmarks share one model), or a temp folder."""
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="galley-bench-")) / "model"
    if not (folder / "config.json").exists():
        make_model(folder, preset)
    return folder


def on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def device_peak_mb(framework: str) -> float:
    """Peak accelerator memory of this process (its host RSS on a CPU)."""
    if framework == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    elif on_gpu():
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return float(stats.get("peak_bytes_in_use", 0)) / 2**20
    return peak_rss_mb()


def run_child(script: str, args: list[str], threads: int) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter; its last stdout line is JSON."""
    # No preallocation: each framework's peak GPU memory is then its own (the figure read is
    # XLA's peak in use either way).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
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


def gpu_bf16_peak_gflops() -> float:
    """The GPU's bf16 matmul peak, as the median of 20 8192^3 products (PyTorch, random data)."""
    import torch

    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e9


def peak_gflops() -> tuple[float, str]:
    """The peak MFU is measured against (the GPU's bf16 one where PyTorch sees a GPU), and
    its name."""
    import torch

    if torch.cuda.is_available():
        return gpu_bf16_peak_gflops(), "bf16 GPU"
    return matmul_peak_gflops(), "fp32 CPU"


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BlockLinearsOnly:
    """A TrainingClient whose sessions put LoRA on the blocks' linear layers only, as PEFT's
    "all-linear" does (galley's default also adapts the output head)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def start_session(self, config: Any) -> Any:
        import attrs

        lora = attrs.evolve(config.lora, train_unembed=False)
        return self.inner.start_session(attrs.evolve(config, lora=lora))


class LoopClock:
    """A workflow observer stamping the training loop's start and each iteration's end."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_iteration_end(self, loop: str, counter: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_metrics(self, stream: str, step: int, metrics: Any) -> None:
        pass


GALLEY = Path(sys.executable).with_name("galley")  # the installed CLI, as a user runs it


def run_galley(args: list[str], folder: Path) -> float:
    """Run ``galley ARGS`` in ``folder``; its wall time (a failure raises with its output)."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(GALLEY), *args], cwd=folder, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"galley {' '.join(args)} failed:\n{done.stdout[-3000:]}")
    return time.perf_counter() - started
