"""Through the SDK and HTTP vs in-process: what `galley serve` plus the `tinker` adapter cost.

    python tests/benchmarks/bench_serve.py [--steps 8] [--rounds 3] [--threads 2]

The train benchmark's model and shape (random Llama, hidden 512, 8 layers; batch 8 x 256;
LoRA rank 16 on every projection but the head; AdamW), trained through galley's
TrainingClient port two ways: the JAX adapter in-process, and the ``tinker`` adapter, whose
requests go through the official SDK over HTTP to a ``galley serve`` process running the same
JAX adapter. Then sampling: 8 prompts of 64 tokens, 128 new tokens each (EOS ignored,
temperature 1, seeded), through the JAX completer in-process and the ``tinker`` completer via
the server. Each way runs in its own client process, alternating, ``--rounds`` times (the
server is started fresh for each served round); the table gives the medians. Token ids are
drawn below the tokenizer's vocabulary (what the ``tinker`` adapter checks requests against).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script
from tests.benchmarks.bench_train import timed_steps
from tests.benchmarks.common import PRESETS, model_folder, run_child
from tests.conftest import free_port
from tests.tinker_server import wait_until_serving

RANK, PROMPTS, PROMPT_LEN, NEW_TOKENS = 16, 8, 64, 128
KEY = "tml-bench"


def data(folder: Path, vocab: int) -> tuple[list[Any], list[Any]]:
    import numpy as np

    from galley.core import Datum, ModelInput

    preset = PRESETS["cpu"]
    rng = np.random.default_rng(0)
    rows = rng.integers(2, vocab, (preset.batch, preset.length + 1))
    weights = [1.0] * (preset.length + 1)
    batch = [Datum.from_tokens(row.tolist(), weights) for row in rows]
    prompts = [
        ModelInput.from_ints(p) for p in rng.integers(2, vocab, (PROMPTS, PROMPT_LEN)).tolist()
    ]
    return batch, prompts


def train_and_sample(
    training: Any, completer_of: Any, folder: Path, steps: int
) -> dict[str, float]:
    from galley.core import AdamParams, LoraConfig, SamplingParams, SessionConfig

    session = training.start_session(
        SessionConfig(str(folder), LoraConfig(rank=RANK, alpha=32, train_unembed=False))
    )
    batch, prompts = data(folder, session.tokenizer.vocab_size)

    def step() -> Any:
        loss = session.forward_backward(batch)
        return loss, session.optim_step(AdamParams(learning_rate=1e-4))

    def wait(futures: Any) -> float:
        futures[1].result()
        return float(futures[0].result().metrics["loss:sum"])

    first, step_s, first_loss = timed_steps(step, wait, steps)
    last_loss = wait(step())  # one more: the loss after the timed steps, to compare

    completer = completer_of(session)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, seed=0, ignore_eos=True)
    completer.complete_batch(prompts, params)  # compiles
    start = time.perf_counter()
    out = completer.complete_batch(prompts, params)
    sample_s = time.perf_counter() - start
    new = sum(len(s.tokens) for c in out for s in c.sequences)
    return {
        "first_step_s": first,
        "step_s": step_s,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "sample_tokens_per_s": new / sample_s,
    }


def run_in_process(folder: Path, steps: int) -> dict[str, float]:
    from galley.adapters.jax import JaxCompleter, JaxTrainingClient
    from galley.adapters.noop import NoopBlobStore, NoopHubClient
    from galley.core import ModelRef

    hub, blobs = NoopHubClient(), NoopBlobStore()
    completer = JaxCompleter(hub, blobs)

    class Base:  # the completer of the base model, as the served completer samples
        def complete_batch(self, prompts: Any, params: Any) -> Any:
            return completer.complete_batch(prompts, params, model=ModelRef(str(folder)))

    return train_and_sample(JaxTrainingClient(hub, blobs), lambda _: Base(), folder, steps)


def run_served(folder: Path, steps: int, threads: int) -> dict[str, float]:
    import tinker

    from galley.adapters.tinker import TinkerCompleter, TinkerTrainingClient

    port, where = free_port(), Path(tempfile.mkdtemp(prefix="galley-bench-serve-"))
    galley = Path(sys.executable).with_name("galley")
    env = {**os.environ, "GALLEY_API_KEY": KEY, "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen(
        [str(galley), "serve", "--port", str(port), "--model", str(folder)],
        cwd=where,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, timeout_s=120)
        service = tinker.ServiceClient(base_url=url, api_key=KEY)

        def completer_of(_: Any) -> Any:
            sampler = TinkerCompleter(service, model=str(folder))
            return sampler

        return train_and_sample(TinkerTrainingClient(url, KEY), completer_of, folder, steps)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--model-dir", help="reuse (or make) the benchmark model here")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "FOLDER"))
    args = parser.parse_args()
    if args.child:
        way, folder = args.child[0], Path(args.child[1])
        runs = (
            run_in_process(folder, args.steps)
            if way == "in-process"
            else run_served(folder, args.steps, args.threads)
        )
        print(json.dumps(runs))
        return
    folder = model_folder(PRESETS["cpu"], args.model_dir)
    results: dict[str, list[dict[str, float]]] = {"in-process": [], "served": []}
    for _ in range(args.rounds):
        for way, runs in results.items():
            child = ["--steps", str(args.steps), "--threads", str(args.threads), "--child", way]
            runs.append(run_child(__file__, [*child, str(folder)], args.threads))
    preset = PRESETS["cpu"]
    tokens = preset.batch * preset.length
    summary: dict[str, Any] = {
        "benchmark": "serve",
        "batch": preset.batch,
        "length": preset.length,
        "lora_rank": RANK,
    }
    print(f"{'':12}{'train tok/s':>12}{'step s':>9}{'first step s':>14}{'sample tok/s':>14}")
    for way, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        first = statistics.median(r["first_step_s"] for r in runs)
        sample = statistics.median(r["sample_tokens_per_s"] for r in runs)
        print(f"{way:12}{tokens / step:>12,.0f}{step:>9.3f}{first:>14.2f}{sample:>14,.0f}")
        summary[way] = {
            "train_tokens_per_s": round(tokens / step, 1),
            "step_s": round(step, 4),
            "first_step_s": round(first, 2),
            "sample_tokens_per_s": round(sample, 1),
            "first_loss": runs[0]["first_loss"],
            "last_loss": runs[0]["last_loss"],
        }
    local, served = summary["in-process"], summary["served"]
    summary["train_ratio"] = round(served["train_tokens_per_s"] / local["train_tokens_per_s"], 3)
    summary["sample_ratio"] = round(served["sample_tokens_per_s"] / local["sample_tokens_per_s"], 3)
    summary["same_losses"] = local["first_loss"] == served["first_loss"] and abs(
        local["last_loss"] - served["last_loss"]
    ) <= 1e-3 * abs(local["last_loss"])
    print(
        f"served / in-process: training {summary['train_ratio']:.2f}x, "
        f"sampling {summary['sample_ratio']:.2f}x; same losses: {summary['same_losses']}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
