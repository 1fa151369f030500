"""Experiment trackers as metrics sinks: Weights & Biases, MLflow, TensorBoard.

Each is a :class:`~galley.ports.metrics.RunTracker` on the tracker's own library (installed
with ``pip install 'galley[wandb]'``, ``[mlflow]`` or ``[tensorboard]``), offline by default,
and usable alone or next to a store: ``adapters.metrics = ["jsonl", "wandb"]``. A tracker that
fails warns once and drops out; training and the other sinks go on.
"""
