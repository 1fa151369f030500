"""Framework overhead on real training: the SFT workflow driving the JAX adapter vs a bare
loop calling the same jitted step functions with the same batches.

    python tests/benchmarks/bench_overhead.py [--steps 48] [--rounds 5]

The workflow runs the embedded default job (galley/tiny-lm, LoRA r16, batch 8) with in-loop
evals off; a recording wrapper around its TrainingClient keeps every request it makes. The
bare loop then replays exactly those requests: pad, ``device_put``, ``forward_backward_step``,
``optim_step``, and reads loss and grad norm back (one step late, so the device never waits
on the host), as any training loop logs them. Everything
is compiled before timing (compiled steps are shared by sessions of one model shape), and the
rounds alternate. The small model makes the per-step overhead as visible as it can be.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

import jax.numpy as jnp

from galley.adapters.composition import build_adapters
from galley.adapters.jax.batching import pad_batch
from galley.adapters.jax.steps import forward_backward_step, hyper_arrays, optim_step
from galley.adapters.noop import NoopBlobStore, NoopMetricsStore
from galley.core import AdamParams, Datum, ForwardBackwardInput
from galley.workflows.sft import SFTConfig, run


class Recording:
    """A TrainingClient wrapper that keeps each session's requests (and forwards them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sessions: list[Any] = []
        self.requests: list[tuple[str, Any]] = []

    def start_session(self, config: Any) -> Any:
        session = self.inner.start_session(config)
        self.sessions.append(session)
        recording = self

        class Session:
            def __getattr__(self, name: str) -> Any:
                return getattr(session, name)

            def forward_backward(
                self,
                data: Sequence[Datum],
                loss_fn: str = "cross_entropy",
                loss_fn_config: Mapping[str, float] | None = None,
            ) -> Any:
                recording.requests.append(("fb", (list(data), loss_fn, loss_fn_config)))
                return session.forward_backward(data, loss_fn, loss_fn_config)

            def optim_step(self, params: AdamParams) -> Any:
                recording.requests.append(("optim", params))
                return session.optim_step(params)

        return Session()


class StepClock:
    """Observer stamping the end of each training-loop iteration."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        pass

    def on_iteration_end(self, loop: str, counter: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_metrics(self, stream: str, step: int, metrics: Mapping[str, float]) -> None:
        pass


def per_step(stamps: list[float]) -> float:
    """Seconds per step after the first (which may include a bucket's first use)."""
    return (stamps[-1] - stamps[1]) / (len(stamps) - 2)


def workflow_round(steps: int) -> tuple[float, Recording]:
    adapters = build_adapters({}, blobs=NoopBlobStore(), metrics=NoopMetricsStore())
    recording = Recording(adapters.training)
    adapters = adapters.replace(training=recording)
    clock = StepClock()
    config = SFTConfig(max_steps=steps, eval_every=0, num_samples=0)
    run(config, adapters, observers=[clock])
    return per_step(clock.stamps), recording


def bare_round(recording: Recording) -> float:
    """Replay the recorded requests through the jitted step functions, no framework. Each
    step's loss and grad norm are read back one step late, so the device never idles on a
    host read: the best a hand-written loop does, and what the workflow's submit-ahead does."""
    session = recording.sessions[0]
    client = session._client
    stamps: list[float] = []
    logged: tuple[Any, Any] | None = None
    for kind, payload in recording.requests:
        if kind == "fb":
            data, loss_fn, cfg = payload
            request = ForwardBackwardInput(tuple(data), loss_fn, dict(cfg or {}))
            batch = pad_batch(request, client.length_buckets, client.layout.batch_rows)
            device = session._device_batch(batch)
            clip = jnp.asarray([0.8, 1.2], jnp.float32)
            value, _, session._grads = forward_backward_step(
                session._graphdef,
                session._trainable,
                session._frozen,
                session._grads,
                device,
                request.loss_fn,
                clip,
                session._pins,
            )
        else:
            session._trainable, session._opt_state, session._grads, norm, _ = optim_step(
                session._trainable,
                session._opt_state,
                session._grads,
                hyper_arrays(payload),
                session._pins,
            )
            if logged is not None:
                float(logged[0]), float(logged[1])  # what a loop logs: one host read each
                stamps.append(time.perf_counter())
            logged = (value, norm)
    if logged is not None:
        float(logged[0]), float(logged[1])
        stamps.append(time.perf_counter())
    return per_step(stamps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.chdir(tempfile.mkdtemp(prefix="galley-bench-"))  # the run's files land there
    _, recording = workflow_round(args.steps)  # compiles every bucket it uses
    bare_round(recording)
    workflow, bare = [], []
    for _ in range(args.rounds):
        seconds, recording = workflow_round(args.steps)
        workflow.append(seconds)
        bare.append(bare_round(recording))
    w, b = statistics.median(workflow), statistics.median(bare)
    # Each round's pair ran back to back, so its ratio is the least disturbed by this
    # machine's drift between rounds (several % on shared CPUs).
    paired = sorted(wi / bi - 1 for wi, bi in zip(workflow, bare, strict=True))
    overhead = statistics.median(paired)
    print(f"{args.steps} steps of the embedded default SFT, median of {args.rounds} rounds")
    print(f"{'':30}{'ms/step':>10}")
    print(f"{'SFT workflow (JAX adapter)':30}{w * 1e3:>10.2f}")
    print(f"{'bare loop, same jitted steps':30}{b * 1e3:>10.2f}")
    print(
        f"framework overhead: {overhead:+.1%} of step time (median of paired rounds; "
        f"range {paired[0]:+.1%} to {paired[-1]:+.1%})"
    )
    print(
        json.dumps(
            {
                "benchmark": "framework_overhead",
                "steps": args.steps,
                "workflow_ms_per_step": round(w * 1e3, 3),
                "bare_ms_per_step": round(b * 1e3, 3),
                "overhead_fraction": round(overhead, 4),
                "overhead_range": [round(paired[0], 4), round(paired[-1], 4)],
            }
        )
    )


if __name__ == "__main__":
    main()
