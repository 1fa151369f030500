"""Packing: galley's `sft` workflow packed vs padded, and vs TRL's `SFTTrainer` with packing,
on chat rows of mixed lengths, in one run.

    python tests/benchmarks/bench_pack.py [--threads 2] [--model-dir DIR]
    python tests/benchmarks/bench_pack.py --preset 0.5b --runs galley-packed galley-padded  # GPU

All three train the benchmark model (``common.PRESETS["cpu"]``: a random Llama, hidden 512,
8 layers) for one epoch of the 384 rows of ``tests/fixtures/chat-lengths`` (lengths
log-uniform from 16 to 1024 tokens; ``make_chat_lengths.py`` writes it), with LoRA rank 16,
alpha 32 on every linear layer of the blocks, AdamW (beta2 0.95, grad clip 1), a constant
learning rate, and the loss on the assistant's answer only. galley takes 8 rows a step,
packed into rows of up to 1024 tokens (its default on a CPU) or each padded to its length
bucket (``adapters.training.packing = false``). TRL (``packing=True``: best-fit-decreasing
into 1024-token rows, padding-free) takes 2 packed rows a step, about the same tokens, for
galley's number of steps (48: the epoch's rows bar the last few), and gets exactly the
tokens and masks galley renders. Each runs in its own process; galley's
epoch runs twice there and the second is timed (the first compiles every shape), TRL's
first step is left out of its time. tokens/s counts each row's tokens; the held-out loss is
the mean NLL per answer token of the 48 test rows after the epoch, each framework's own.

``--preset 0.5b`` trains Qwen2.5-0.5B's shapes in bfloat16 instead (``common.PRESETS``), for
a GPU; there galley's packing is opt-in (the fused attention kernel takes no segments), and
the packed run turns it on.
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

from tests.benchmarks.common import PRESETS, BlockLinearsOnly, model_folder, run_child

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "chat-lengths"
RANK, ALPHA, LR, BATCH, MAX_LENGTH, TRL_ROWS = 16, 32.0, 1e-3, 8, 1024, 2


def galley_child(folder: str, packing: bool, dtype: str) -> dict[str, Any]:
    import structlog

    from galley.adapters.composition import AdapterChoice, build_adapters
    from galley.adapters.noop import NoopMetricsStore
    from galley.workflows.sft import SFTConfig, run

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.chdir(tempfile.mkdtemp())  # the runs' files go here
    options = {"packing": packing, "dtype": dtype, "length_buckets": [64, 128, 256, 512, 1024]}
    adapters = build_adapters(
        {"training": AdapterChoice("jax", options)}, metrics=NoopMetricsStore()
    )
    adapters = adapters.replace(training=BlockLinearsOnly(adapters.training))
    results = []
    for attempt in ("compile", "timed"):
        config = SFTConfig(
            base_model=folder,
            dataset=str(DATA),
            batch_size=BATCH,
            max_length=MAX_LENGTH,
            num_epochs=1,
            lora_rank=RANK,
            lora_alpha=ALPHA,
            learning_rate=LR,
            lr_schedule="constant",
            eval_every=0,
            num_samples=0,
            run_id=attempt,
        )
        results.append(run(config, adapters))
    timed = results[-1]
    tokens = sum(row["tokens"] for row in timed.metrics)
    seconds = sum(row["tokens"] / row["tokens_per_s"] for row in timed.metrics)
    return {
        "tokens_per_s": tokens / seconds,
        "steps": len(timed.metrics),
        "heldout_loss": timed.eval[-1]["eval/nll"],
    }


def rendered_rows(folder: str, split: str) -> list[dict[str, list[int]]]:
    """The split as galley renders it: token ids and which of them are trained (answers)."""
    from galley.adapters.hf.tokenizer import HFTokenizerAdapter
    from galley.core.domain.chat import TrainOn
    from galley.core.domain.data_formats import row_to_conversation
    from galley.core.domain.rendering import RoleColonRenderer

    renderer = RoleColonRenderer(HFTokenizerAdapter(Path(folder), (1,), 0))
    rows = []
    for i, line in enumerate((DATA / f"{split}.jsonl").read_text().splitlines()):
        conversation = row_to_conversation(json.loads(line), source=split, index=i)
        rendered = renderer.render(conversation, TrainOn.LAST_ASSISTANT_MESSAGE)
        rows.append(
            {
                "input_ids": rendered.model_input.to_ints(),
                "assistant_masks": [int(w > 0) for w in rendered.weights],
            }
        )
    return rows


def trl_child(folder: str, dtype: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    train, test = rendered_rows(folder, "train"), rendered_rows(folder, "test")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))

    class Clock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())

    clock = Clock()
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_length=MAX_LENGTH,
        packing=True,  # best-fit decreasing, padding-free
        per_device_train_batch_size=TRL_ROWS,
        max_steps=len(train) // BATCH,  # galley's steps: the same number of updates
        learning_rate=LR,
        lr_scheduler_type="constant",
        adam_beta2=0.95,
        adam_epsilon=1e-12,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1_000_000,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=dtype == "bfloat16",
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=[f"{n}_proj" for n in ("q", "k", "v", "o", "gate", "up", "down")],
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        peft_config=lora,
        callbacks=[clock],
    )
    trainer.train()
    steps = len(clock.stamps)
    per_step = sum(len(row["input_ids"]) for row in train) / len(trainer.get_train_dataloader())
    tokens = per_step * (steps - 1)
    return {
        "tokens_per_s": tokens / (clock.stamps[-1] - clock.stamps[0]),
        "steps": steps,
        "heldout_loss": heldout_loss(trainer.model, test),
    }


def heldout_loss(model: Any, rows: list[dict[str, list[int]]]) -> float:
    """Mean NLL per trained (answer) token, each row on its own."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=model.device)
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            picked = logp.gather(1, ids[0, 1:, None])[:, 0]
            mask = torch.tensor(row["assistant_masks"][1:], dtype=torch.bool, device=model.device)
            total -= float(picked[mask].sum())
            count += int(mask.sum())
    return total / count


RUNS = ("galley-packed", "galley-padded", "trl")


def child(framework: str, folder: str, dtype: str) -> dict[str, Any]:
    if framework == "trl":
        return trl_child(folder, dtype)
    return galley_child(folder, packing=framework == "galley-packed", dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", help="reuse (or make) the benchmark model here")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    preset = PRESETS[args.preset]
    folder = model_folder(preset, args.model_dir)
    runs = {
        name: run_child(__file__, ["--child", name, str(folder), preset.dtype], args.threads)
        for name in args.runs
    }
    print(f"{'':<16}{'tokens/s':>10}{'steps':>7}{'held-out loss':>15}")
    for name, r in runs.items():
        print(f"{name:<16}{r['tokens_per_s']:>10.0f}{r['steps']:>7}{r['heldout_loss']:>15.4f}")
    packed, padded, trl = (runs.get(name) for name in RUNS)
    if packed and padded:
        ratio = packed["tokens_per_s"] / padded["tokens_per_s"]
        print(f"packed / padded: {ratio:.2f}x (target 2x)")
    if packed and trl:
        print(
            f"galley / TRL: {packed['tokens_per_s'] / trl['tokens_per_s']:.2f}x (target 1.5x) "
            f"at held-out loss {packed['heldout_loss']:.4f} vs {trl['heldout_loss']:.4f}"
        )
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
