"""What the engine costs per step: the SFT training loop on noop adapters vs a bare loop.

    python tests/benchmarks/bench_noop_sft.py [--steps 200] [--repeats 5]

Both sides drive a noop session with the same batches, requests and waits (submit two steps
ahead), so the difference is what the workflow adds per step: stage dispatch, state and
data-flow bookkeeping, metrics through the MetricsStore port, events. Also reports the whole
run (load, render, evals, checkpoint, export). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Mapping

import structlog

from galley.adapters.noop import noop_adapters
from galley.core import AdamParams, SessionConfig, TrainOn, to_datum
from galley.core.domain.batching import BatchPlan
from galley.core.domain.data_formats import row_to_conversation
from galley.core.domain.rendering import RoleColonRenderer
from galley.core.stages.train import normalised_batch
from galley.workflows.sft import SFTConfig, run


class LoopTimer:
    """Observer timing the training loop from its start to its last iteration."""

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        self.start = time.perf_counter()

    def on_iteration_end(self, loop: str, counter: int) -> None:
        self.end = time.perf_counter()

    def on_metrics(self, stream: str, step: int, metrics: Mapping[str, float]) -> None:
        pass


def sft_seconds(steps: int) -> tuple[float, float]:
    """(training loop, whole run) seconds of noop SFT."""
    timer = LoopTimer()
    started = time.perf_counter()
    run(SFTConfig(max_steps=steps, run_id="bench"), noop_adapters(), observers=[timer])
    return timer.end - timer.start, time.perf_counter() - started


def bare_seconds(steps: int) -> float:
    """The same requests in a plain loop: no stages, no metrics store, no events."""
    adapters, config = noop_adapters(), SFTConfig()
    session = adapters.training.start_session(SessionConfig(config.base_model))
    rows = adapters.datasets.to_list(adapters.datasets.load(config.dataset, "train"))
    renderer = RoleColonRenderer(session.tokenizer)
    data = [
        to_datum(
            renderer.render(
                row_to_conversation(r, source="bench", index=i), TrainOn.LAST_ASSISTANT_MESSAGE
            ),
            256,
        )
        for i, r in enumerate(rows)
    ]
    plan = BatchPlan(len(data), config.batch_size, config.seed)
    started = time.perf_counter()
    pending = []
    for step in range(steps):
        batch = normalised_batch([data[i] for i in plan.indices(step)])
        pending.append((session.forward_backward(batch), session.optim_step(AdamParams(3e-4))))
        while len(pending) > config.submit_ahead:
            for future in pending.pop(0):
                future.result()
    for futures in pending:
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - started
    session.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sft_runs = [sft_seconds(args.steps) for _ in range(args.repeats)]
    bare_runs = [bare_seconds(args.steps) for _ in range(args.repeats)]
    loop_s = statistics.median(r[0] for r in sft_runs)
    whole_s = statistics.median(r[1] for r in sft_runs)
    bare_s = statistics.median(bare_runs)
    overhead_us = (loop_s - bare_s) / args.steps * 1e6
    print(f"{args.steps} steps, median of {args.repeats}")
    print(f"{'':32}{'seconds':>10}{'steps/s':>12}")
    for label, seconds in (
        ("SFT training loop", loop_s),
        ("bare loop, same requests", bare_s),
        ("SFT whole run", whole_s),
    ):
        print(f"{label:32}{seconds:>10.3f}{args.steps / seconds:>12,.0f}")
    print(f"engine overhead: {overhead_us:,.0f} us/step ({loop_s / bare_s:.2f}x the bare loop)")
    figures = {
        "benchmark": "noop_sft",
        "steps": args.steps,
        "loop_s": round(loop_s, 4),
        "bare_s": round(bare_s, 4),
        "whole_run_s": round(whole_s, 4),
        "loop_steps_per_s": round(args.steps / loop_s, 1),
        "ratio_loop_over_bare": round(loop_s / bare_s, 3),
        "overhead_us_per_step": round(overhead_us, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
