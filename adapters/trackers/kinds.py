"""The experiment-tracker kinds (metrics sinks), for configs and the CLI."""

from __future__ import annotations

from typing import Any

from galley.adapters.composition import AdapterKind, Built
from galley.adapters.trackers.mlflow import MlflowOptions
from galley.adapters.trackers.tensorboard import TensorboardOptions
from galley.adapters.trackers.wandb import WandbOptions


def _wandb(o: WandbOptions, built: Built) -> Any:
    from galley.adapters.trackers.wandb import WandbTracker

    return WandbTracker(o)


def _mlflow(o: MlflowOptions, built: Built) -> Any:
    from galley.adapters.trackers.mlflow import MlflowTracker

    return MlflowTracker(o)


def _tensorboard(o: TensorboardOptions, built: Built) -> Any:
    from galley.adapters.trackers.tensorboard import TensorboardTracker

    return TensorboardTracker(o)


KINDS = (
    AdapterKind(
        "metrics",
        "wandb",
        "Weights & Biases runs (offline under <dir>/wandb by default); galley[wandb]",
        WandbOptions,
        _wandb,
    ),
    AdapterKind(
        "metrics",
        "mlflow",
        "MLflow runs (SQLite store runs/mlflow.db by default, or a server); galley[mlflow]",
        MlflowOptions,
        _mlflow,
    ),
    AdapterKind(
        "metrics",
        "tensorboard",
        "TensorBoard event files under <logdir>/<run_id>/tensorboard; galley[tensorboard]",
        TensorboardOptions,
        _tensorboard,
    ),
)
