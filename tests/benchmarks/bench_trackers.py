"""What galley's tracker sinks cost per step, against logging to each library directly as a
hand-written loop (or transformers' callbacks) would.

    python tests/benchmarks/bench_trackers.py [--steps 1000] [--repeats 3]

Each side logs the same rows (6 train metrics a step) to a fresh run of its own in a temporary
folder, offline: galley through ``record`` (and ``end_run``), the peer through the library
(W&B ``run.log(..., step=)``; MLflow ``log_metrics`` per step, as transformers'
``MLflowCallback`` does; TensorBoard through ``torch.utils.tensorboard.SummaryWriter.add_scalar``,
as ``TensorBoardCallback`` does). Opening the run is timed apart from the rows. Medians of
alternating rounds; prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from galley.adapters.trackers.mlflow import MlflowOptions, MlflowTracker
from galley.adapters.trackers.tensorboard import TensorboardOptions, TensorboardTracker
from galley.adapters.trackers.wandb import WandbOptions, WandbTracker
from galley.core import MetricRecord, TrackedRun

NAMES = ("loss", "lr", "grad_norm", "update_norm", "tokens", "tokens_per_s")
Timing = tuple[float, float]  # (open seconds, rows seconds)


def rows(steps: int) -> list[MetricRecord]:
    return [
        MetricRecord("bench", "train", s, {n: 1.0 / (s + i) for i, n in enumerate(NAMES)}, 0.0)
        for s in range(1, steps + 1)
    ]


def galley_side(make: Callable[[Path], Any], folder: Path, data: list[MetricRecord]) -> Timing:
    started = time.perf_counter()
    tracker = make(folder)
    tracker.open_run(TrackedRun("bench", "sft", {"learning_rate": 1e-4}))
    opened = time.perf_counter()
    for row in data:
        tracker.record(row)
    tracker.end_run("finished")
    assert tracker.dropped is None, tracker.dropped
    return opened - started, time.perf_counter() - opened


def wandb_direct(folder: Path, data: list[MetricRecord]) -> Timing:
    import wandb

    started = time.perf_counter()
    run = wandb.init(
        project="galley",
        dir=str(folder),
        mode="offline",
        config={"learning_rate": 1e-4},
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    opened = time.perf_counter()
    for row in data:
        run.log({f"train/{k}": v for k, v in row.metrics.items()}, step=row.step)
    run.finish()
    return opened - started, time.perf_counter() - opened


def mlflow_direct(folder: Path, data: list[MetricRecord]) -> Timing:
    import mlflow

    started = time.perf_counter()
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    mlflow.set_experiment("galley")
    mlflow.start_run(run_name="bench")
    mlflow.log_params({"learning_rate": 1e-4})
    opened = time.perf_counter()
    for row in data:
        mlflow.log_metrics({f"train/{k}": v for k, v in row.metrics.items()}, step=row.step)
    mlflow.end_run()
    return opened - started, time.perf_counter() - opened


def tensorboard_direct(folder: Path, data: list[MetricRecord]) -> Timing:
    from torch.utils.tensorboard import SummaryWriter

    started = time.perf_counter()
    writer = SummaryWriter(str(folder / "bench"))
    writer.add_text("config", json.dumps({"learning_rate": 1e-4}))
    opened = time.perf_counter()
    for row in data:
        for k, v in row.metrics.items():
            writer.add_scalar(f"train/{k}", v, row.step)
    writer.close()
    return opened - started, time.perf_counter() - opened


SIDES: dict[str, tuple[Callable[[Path], Any], Callable[[Path, list[MetricRecord]], Timing]]] = {
    "wandb": (lambda f: WandbTracker(WandbOptions(dir=str(f))), wandb_direct),
    "mlflow": (
        lambda f: MlflowTracker(MlflowOptions(tracking_uri=f"sqlite:///{f}/mlflow.db")),
        mlflow_direct,
    ),
    "tensorboard": (
        lambda f: TensorboardTracker(TensorboardOptions(logdir=str(f))),
        tensorboard_direct,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    data = rows(args.steps)
    figures: dict[str, Any] = {"benchmark": "trackers", "steps": args.steps}
    print(f"{args.steps} steps x {len(NAMES)} metrics, median of {args.repeats} alternating rounds")
    print(f"{'':14}{'galley us/step':>16}{'direct us/step':>16}{'ratio':>8}{'open s (g/d)':>16}")
    for name, (make, direct) in SIDES.items():
        ours: list[Timing] = []
        theirs: list[Timing] = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                ours.append(galley_side(make, Path(a), data))
                theirs.append(direct(Path(b), data))
        g_rows = statistics.median(t[1] for t in ours) / args.steps * 1e6
        d_rows = statistics.median(t[1] for t in theirs) / args.steps * 1e6
        g_open = statistics.median(t[0] for t in ours)
        d_open = statistics.median(t[0] for t in theirs)
        print(
            f"{name:14}{g_rows:>16,.0f}{d_rows:>16,.0f}{g_rows / d_rows:>8.2f}"
            f"{g_open:>8.2f}/{d_open:.2f}"
        )
        figures[name] = {
            "galley_us_per_step": round(g_rows, 1),
            "direct_us_per_step": round(d_rows, 1),
            "ratio": round(g_rows / d_rows, 3),
            "galley_open_s": round(g_open, 3),
            "direct_open_s": round(d_open, 3),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
