"""RL: galley's `rl` workflow (JAX adapter) vs TRL's `GRPOTrainer` (PyTorch, CPU) in one run.

    python tests/benchmarks/bench_rl.py [--steps 32] [--threads 2]

Both train the embedded model folder (galley/tiny-lm, a standard HF Llama folder) on the
embedded `galley/tiny-instruct` prompts with the same reward (`char_similarity` of the answer,
cut at the chat format's next turn, to the reference), 8 prompts a step and 8 completions a
prompt, at most 16 new tokens at temperature 1, LoRA rank 16 and alpha 32 on every linear
layer of the blocks, learning rate 3e-3 decaying linearly to 0, AdamW (beta2 0.95, clip 1),
rewards scaled by their group's std, the token-level loss normalisation (galley's `tokens`,
TRL's `dapo`), no KL term, one optimizer step per batch (so TRL's clipped ratio is 1 and its
gradient is galley's `importance_sampling` one). TRL gets the prompts as the same text galley
renders. Each framework runs in its own process. Reported: seconds per RL step after the
first two (sampling included), the first step's time, and the mean training reward of the last
8 steps of each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

import itertools

from tests.benchmarks.common import BlockLinearsOnly, LoopClock, run_child

PROMPTS, GROUP, NEW_TOKENS, LR, RANK, ALPHA, LAST = 8, 8, 16, 3e-3, 16, 32.0, 8
STOP = "\n\nUser:"


def galley_child(steps: int, seed: int) -> dict[str, Any]:
    import structlog

    from galley.adapters.composition import build_adapters
    from galley.adapters.noop import NoopMetricsStore
    from galley.workflows.rl import RLConfig, run

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    adapters = build_adapters({}, metrics=NoopMetricsStore())
    adapters = adapters.replace(training=BlockLinearsOnly(adapters.training))
    clock = LoopClock()
    config = RLConfig(
        max_steps=steps,
        batch_size=PROMPTS,
        group_size=GROUP,
        max_tokens=NEW_TOKENS,
        learning_rate=LR,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        eval_every=0,
        num_samples=0,
        seed=seed,
    )
    result = run(config, adapters, observers=[clock])
    durations = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
    rewards = [m["reward"] for m in result.metrics]
    return {
        "step_s": statistics.median(durations[2:]),
        "first_step_s": durations[0],
        "reward_last": statistics.mean(rewards[-LAST:]),
        "reward_first": rewards[0],
    }


def trl_child(steps: int, seed: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from galley.adapters.embedded import DATASETS, DEFAULT_DATASET, DEFAULT_MODEL, MODELS
    from galley.adapters.hf.tokenizer import HFTokenizerAdapter
    from galley.core.domain.scorers import char_similarity

    torch.manual_seed(seed)
    folder = MODELS / DEFAULT_MODEL
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos = tokenizer.bos_token if HFTokenizerAdapter(folder).bos_token_id is not None else ""
    rows = []
    for line in (DATASETS / DEFAULT_DATASET / "train.jsonl").read_text().splitlines():
        user, answer = json.loads(line)["messages"]
        prompt = f"{bos}User: {user['content']}\n\nAssistant:"
        rows.append({"prompt": prompt, "reference": answer["content"]})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    def reward(prompts: Any, completions: Any, reference: Any, **_: Any) -> list[float]:
        return [
            char_similarity({"reference": ref}, text.split(STOP)[0])
            for text, ref in zip(completions, reference, strict=True)
        ]

    class Clock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.rewards: list[float] = []

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="galley-bench-trl-"),
        use_cpu=True,
        per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        learning_rate=LR,
        lr_scheduler_type="linear",
        adam_beta2=0.95,
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
    )
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", lora_dropout=0.0)
    clock = Clock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[clock],
    )
    started = time.perf_counter()
    trainer.train()
    stamps = [started, *clock.stamps]
    durations = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "step_s": statistics.median(durations[2:]),
        "first_step_s": durations[0],
        "reward_last": statistics.mean(clock.rewards[-LAST:]),
        "reward_first": clock.rewards[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3, help="runs of each, seeds 0, 1, ...")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--child", choices=["galley", "trl"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        os.chdir(tempfile.mkdtemp(prefix="galley-bench-"))  # the run's files land there
        child = galley_child if args.child == "galley" else trl_child
        print(json.dumps(child(args.steps, args.seed)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"galley": [], "trl": []}
    for seed in range(args.seeds):  # alternating, so drift hits both alike
        for name, done in runs.items():
            child_args = ["--child", name, "--steps", str(args.steps), "--seed", str(seed)]
            done.append(run_child(__file__, child_args, args.threads))
    results = {
        name: {k: statistics.mean(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    g, t = results["galley"], results["trl"]
    print(
        f"RL, {args.steps} steps of {PROMPTS} prompts x {GROUP} completions, LoRA r{RANK}; "
        f"means over seeds 0-{args.seeds - 1}"
    )
    print(f"{'':28}{'s/step':>9}{'first step s':>14}{'reward (first)':>16}{'reward (last 8)':>17}")
    for name, r in (("galley (JAX adapter)", g), ("TRL GRPOTrainer (torch)", t)):
        print(
            f"{name:28}{r['step_s']:>9.3f}{r['first_step_s']:>14.2f}"
            f"{r['reward_first']:>16.3f}{r['reward_last']:>17.3f}"
        )
    for name, rs in runs.items():
        print(f"{name} final rewards by seed: {[round(r['reward_last'], 3) for r in rs]}")
    ratio = t["step_s"] / g["step_s"]
    gap = g["reward_last"] - t["reward_last"]
    print(f"galley / TRL steps/s: {ratio:.2f}x; final reward gap {gap:+.3f}")
    figures = {f"{name}_{k}": round(v, 4) for name, r in results.items() for k, v in r.items()}
    print(json.dumps({"benchmark": "rl", "steps": args.steps, "ratio": round(ratio, 3), **figures}))


if __name__ == "__main__":
    main()
