"""DPO: galley's `dpo` workflow (JAX adapter) vs TRL's `DPOTrainer` (PyTorch, CPU) in one run.

    python tests/benchmarks/bench_dpo.py [--steps 64] [--threads 2]

Both train the embedded model folder (galley/tiny-lm, a standard HF Llama folder) on the
embedded `galley/tiny-prefs` pairs with the same beta, learning rate and schedule (linear to
0), AdamW (beta2 0.95, grad clip 1), batch of 8 pairs, steps, LoRA (rank 16, alpha 32, every
linear layer of the blocks, not the output head) and `max_length`. TRL gets the pairs as
strings that tokenize to exactly the tokens galley renders (checked), so both score the same
sequences. Reference log-probabilities are precomputed in both (`precompute_ref_log_probs`)
and timed apart from training. Each framework runs in its own process; steps/s is over the
steps after the first 8 (which compile, or warm up). The held-out accuracy is
`rewards/accuracies` on the 48 test pairs after the last step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from tests.benchmarks.common import BlockLinearsOnly, LoopClock, run_child

BETA, LR, BATCH, RANK, ALPHA, MAX_LENGTH, WARMUP = 0.1, 2e-3, 8, 16, 32.0, 128, 8


def galley_child(steps: int) -> dict[str, Any]:
    import structlog

    from galley.adapters.composition import build_adapters
    from galley.adapters.noop import NoopMetricsStore
    from galley.workflows.dpo import DPOConfig, run

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))

    adapters = build_adapters({}, metrics=NoopMetricsStore())
    adapters = adapters.replace(training=BlockLinearsOnly(adapters.training))
    clock = LoopClock()
    reference_s: list[float] = []

    def keep_reference_time(logger: Any, method: str, event: dict[str, Any]) -> Any:
        if event.get("event") == "reference.computed":
            reference_s.append(float(event["seconds"]))
        raise structlog.DropEvent

    structlog.configure(processors=[keep_reference_time])
    config = DPOConfig(
        max_steps=steps,
        batch_size=BATCH,
        learning_rate=LR,
        beta=BETA,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        max_length=MAX_LENGTH,
        eval_every=0,
        checkpoint_every=0,
    )
    result = run(config, adapters, observers=[clock])
    timed = clock.stamps[1 + WARMUP :]
    return {
        "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
        "reference_s": reference_s[0],
        "accuracy": result.eval[-1]["eval/rewards/accuracies"],
        "margin": result.eval[-1]["eval/rewards/margins"],
        "train_loss_last": result.metrics[-1]["loss"],
    }


def trl_rows(split: str, bos: str) -> list[dict[str, str]]:
    """The split's pairs as TRL's standard (string) format, in galley's role_colon text
    (``bos``: the BOS token's text when galley's renderer starts with it)."""
    from galley.adapters.embedded import DATASETS, PREFERENCE_DATASET

    rows = []
    path = DATASETS / PREFERENCE_DATASET / f"{split}.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        prompt = row["prompt"][0]["content"]
        rows.append(
            {
                "prompt": f"{bos}User: {prompt}\n\nAssistant:",
                "chosen": f" {row['chosen'][0]['content']}",
                "rejected": f" {row['rejected'][0]['content']}",
            }
        )
    return rows


def galley_tokenizer() -> Any:
    from galley.adapters.embedded import DEFAULT_MODEL, MODELS
    from galley.adapters.hf.tokenizer import HFTokenizerAdapter

    return HFTokenizerAdapter(MODELS / DEFAULT_MODEL)


def check_same_tokens(tokenizer: Any, row: dict[str, str]) -> None:
    """galley's rendering of the first pair is the tokens TRL will train on."""
    from galley.adapters.embedded import DATASETS, PREFERENCE_DATASET
    from galley.core.domain.preferences import render_pair, row_to_pair
    from galley.core.domain.rendering import RoleColonRenderer

    path = DATASETS / PREFERENCE_DATASET / "train.jsonl"
    pair = row_to_pair(json.loads(path.read_text().splitlines()[0]), source="", index=0)
    ours = render_pair(RoleColonRenderer(galley_tokenizer()), pair, MAX_LENGTH, "keep_end")
    text = row["prompt"] + row["chosen"] + tokenizer.eos_token
    theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
    last = int(ours.chosen.loss_fn_inputs["target_tokens"].data[-1])
    galley_ids = [*ours.chosen.model_input.to_ints(), last]
    if galley_ids != theirs:
        raise SystemExit(f"token mismatch:\n galley {galley_ids}\n trl    {theirs}")


def trl_child(steps: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from galley.adapters.embedded import DEFAULT_MODEL, MODELS

    torch.manual_seed(0)
    folder = MODELS / DEFAULT_MODEL
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos = tokenizer.bos_token if galley_tokenizer().bos_token_id is not None else ""
    train, test = trl_rows("train", bos), trl_rows("test", bos)
    check_same_tokens(tokenizer, train[0])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    class Clock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())

    reference_s: list[float] = []
    precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = precompute(self, *args, **kwargs)
        reference_s.append(time.perf_counter() - started)
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute  # type: ignore[method-assign]
    out = tempfile.mkdtemp(prefix="galley-bench-trl-")
    args = DPOConfig(
        output_dir=out,
        use_cpu=True,
        precompute_ref_log_probs=True,
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="linear",
        adam_beta2=0.95,
        max_grad_norm=1.0,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=16,
        max_steps=steps,
        max_length=MAX_LENGTH,
        logging_steps=steps,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
    )
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", lora_dropout=0.0)
    clock = Clock()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(test),
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[clock],
    )
    started = time.perf_counter()
    trainer.train()
    clock.stamps.insert(0, started)
    metrics = trainer.evaluate()
    timed = clock.stamps[1 + WARMUP :]
    return {
        "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
        "reference_s": sum(reference_s),
        "accuracy": metrics["eval_rewards/accuracies"],
        "margin": metrics["eval_rewards/margins"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--child", choices=["galley", "trl"])
    args = parser.parse_args()
    if args.child:
        os.chdir(tempfile.mkdtemp(prefix="galley-bench-"))  # the run's files land there
        child = galley_child if args.child == "galley" else trl_child
        print(json.dumps(child(args.steps)))
        return
    results = {
        name: run_child(__file__, ["--child", name, "--steps", str(args.steps)], args.threads)
        for name in ("galley", "trl")
    }
    g, t = results["galley"], results["trl"]
    print(f"DPO, {args.steps} steps of {BATCH} pairs, beta {BETA}, lr {LR}, LoRA r{RANK}")
    print(f"{'':28}{'steps/s':>9}{'reference s':>13}{'held-out acc':>14}{'margin':>9}")
    for name, r in (("galley (JAX adapter)", g), ("TRL DPOTrainer (torch)", t)):
        print(
            f"{name:28}{r['steps_per_s']:>9.2f}{r['reference_s']:>13.2f}"
            f"{r['accuracy']:>14.3f}{r['margin']:>9.3f}"
        )
    ratio = g["steps_per_s"] / t["steps_per_s"]
    print(f"galley / TRL steps/s: {ratio:.2f}x; accuracy gap {g['accuracy'] - t['accuracy']:+.3f}")
    print(
        json.dumps(
            {
                "benchmark": "dpo",
                "steps": args.steps,
                "ratio": round(ratio, 3),
                **{f"{name}_{k}": round(v, 4) for name, r in results.items() for k, v in r.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
