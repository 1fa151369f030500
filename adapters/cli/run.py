"""`galley run WORKFLOW`: its options, the run itself, and what it prints while it runs,
when it ends and when it fails (the exit code says which kind of failure it was)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from galley.adapters.cli.hints import hint_line
from galley.adapters.cli.logging import configure_logging
from galley.adapters.cli.run_config import RunConfig, load_run_config, resumed_config
from galley.adapters.composition import (
    build_adapters,
    process_role,
)
from galley.adapters.settings import check_can_write
from galley.adapters.wrappers.events import TraceRecorder, traced
from galley.core.adapter_set import Adapters
from galley.core.domain.scorers import ScoreError
from galley.core.engine import Stream
from galley.core.engine.run import new_run_id
from galley.core.errors import (
    ConfigError,
    DataError,
    GalleyError,
    NotFoundError,
    ValidationError,
    WorkflowError,
)
from galley.core.keys import has_scheme
from galley.core.runs.checkpoint_index import read_index
from galley.core.runs.layout import RunPaths
from galley.core.runs.records import TRAIN
from galley.core.runs.run_record import read_run_record
from galley.core.runs.summary import Summary


class ProgressObserver:
    """A rich progress bar over the training loop: steps, loss and tokens/s. Where the output
    is not a terminal (a pipe, a log file, CI), where a bar cannot redraw, a line every
    ``STEP_LINES``-th of the run instead. A resumed loop says where it resumed from
    (``checkpoint_at(step)``: the key of the run's checkpoint at that step, if known)."""

    STEP_LINES = 20  # lines a piped run prints, about

    def __init__(
        self, console: Console, checkpoint_at: Callable[[int], str | None] = lambda step: None
    ) -> None:
        self.console = console
        self.checkpoint_at = checkpoint_at
        self.piped = not console.is_terminal
        self.started = 0.0
        self.first = self.total = self.every = 0
        self.last: dict[str, str] = {}
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: Any = None

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        if done:
            key = self.checkpoint_at(done)
            where = f" (checkpoint {key})" if key else ""
            self.console.print(f"resumed from step {done}{where}", soft_wrap=True)
        self.started, self.first, self.total = time.monotonic(), done, total
        self.every = max(1, round((total - done) / self.STEP_LINES))
        if self.piped:
            return
        self.progress.start()
        self.task = self.progress.add_task(loop, total=total, completed=done, loss="-", tps="-")

    def on_iteration_end(self, loop: str, counter: int) -> None:
        if not self.piped:
            self.progress.update(self.task, completed=counter)

    def on_metrics(self, stream: Stream, step: int, metrics: Mapping[str, float]) -> None:
        if stream != TRAIN:
            return
        if "loss" not in metrics:  # a skipped step (non-finite loss or gradient)
            self.last = {"loss": f"skipped step {step}", "tps": "-"}
        else:
            tps = f"{metrics.get('tokens_per_s', 0):,.0f}"
            self.last = {"loss": f"{metrics['loss']:.4f}", "tps": tps}
        if self.task is not None:
            self.progress.update(self.task, loss=self.last["loss"], tps=self.last["tps"])
        if self.piped and ((step - self.first) % self.every == 0 or step == self.total):
            elapsed = time.monotonic() - self.started
            left = elapsed / max(step - self.first, 1) * (self.total - step)
            eta = time.strftime("%H:%M:%S", time.gmtime(left))
            self.console.print(
                f"step {step}/{self.total}: loss {self.last['loss']}, {self.last['tps']} "
                f"tokens/s, ETA {eta}",
                soft_wrap=True,
            )

    def stop(self) -> None:
        self.progress.stop()


def checkpoint_finder(adapters: Adapters, config: Any) -> Callable[[int], str | None]:
    """The key of the run's indexed checkpoint at a step (what a resume loaded), if any."""

    def find(step: int) -> str | None:
        try:
            records = read_index(adapters.blobs, RunPaths(config.output, config.run_id))
        except GalleyError:
            return None
        return next((r.state.key for r in reversed(records) if r.step == step), None)

    return find


def print_summary(console: Console, summary: Summary, where: Callable[[str], str]) -> None:
    """A workflow's summary of its run: its tables, its notes, where it put things."""
    for line in summary.header:
        console.print(line, soft_wrap=True)
    for shown in summary.tables:
        table = Table(title=shown.title, show_header=True, show_lines=shown.lines)
        for i, column in enumerate(shown.columns):
            left = i == 0 or shown.lines
            table.add_column(column, justify="left" if left else "right", overflow="fold")
        for row in shown.rows:
            table.add_row(*row)
        console.print(table)
    for note in summary.notes:
        console.print(note)
    for label, key in summary.blobs:
        console.print(f"{label}: {where(key)}")


# A run that stopped on one of these was refused for its input (exit 2), not broken (exit 1).
INPUT_ERRORS = (ConfigError, ValidationError, DataError, NotFoundError)
INTERRUPTED = 130  # the shell's code for a Ctrl-C


@contextlib.contextmanager
def tracing(
    path: Path | None, adapters: Adapters, console: Console
) -> Iterator[tuple[Adapters, list[Any]]]:
    """With a ``path``: the adapters with their calls recorded, the recorder to observe the
    run's stages, and the trace written there when the run ends, however it ends."""
    if path is None:
        yield adapters, []
        return
    recorder = TraceRecorder()
    try:
        yield traced(adapters, recorder), [recorder]
    finally:
        path.parent.mkdir(parents=True, exist_ok=True)
        recorder.write(path)
        console.print(f"trace: {path} (open it in https://ui.perfetto.dev)")


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    if args.accept_changes and not args.resume:
        raise ConfigError("--accept-changes applies to a resume: give it with --resume RUN_ID")
    sets = list(args.set)
    if args.resume:
        sets += [f"run_id={json.dumps(args.resume)}", "resume=true"]
    run_config = load_run_config(args.workflow, args.config, sets, args.adapters)
    if args.trace is not None:  # found now, not after the run
        check_can_write(args.trace, "--trace")
    config = run_config.config
    named = getattr(config, "run_id", "unset") is not None
    if not named:
        config = attrs.evolve(config, run_id=new_run_id(args.workflow))
    close_log = configure_logging("info" if args.verbose else "warning", args.log_file)
    try:
        adapters = build_adapters(run_config.adapters)
        if process_role()[1] > 1 and not named:
            raise ConfigError(
                "a run of several processes needs its id: give every process the same "
                "--set run_id=NAME (or --resume NAME)"
            )
        if args.resume:
            config = resumed_config(run_config, adapters, args.resume)
        kinds = ", ".join(f"{port}={c.kind}" for port, c in run_config.adapters.items())
        what = [getattr(config, f, None) for f in ("base_model", "dataset")]
        on = f": {what[0]} on {what[1]}" if all(what) else ""
        console.print(f"galley {args.workflow} run {config.run_id}{on}")
        console.print(f"adapters: {kinds}")
        observer = ProgressObserver(console, checkpoint_finder(adapters, config))
        with tracing(args.trace, adapters, console) as (adapters, more):
            try:
                result = run_config.workflow.run(
                    config,
                    adapters,
                    observers=[observer, *more],
                    accept_changes=args.accept_changes,
                )
            finally:
                observer.stop()
    except WorkflowError as error:
        code = report_failure(console, error, args.workflow, config, adapters)
        if process_role()[1] > 1:
            close_log()
            end_process(console, code, config.run_id)
        return code
    finally:
        close_log()
    print_outcome(console, run_config, adapters, config, result)
    return 0


def print_outcome(
    console: Console, run_config: RunConfig, adapters: Adapters, config: Any, result: Any
) -> None:
    """The run's summary, where its files went, and where its metrics can be seen."""
    blobs_choice = run_config.adapters["blobs"]

    def where(key: str) -> str:
        if has_scheme(key):  # kept by a service (a tinker:// checkpoint), not in the blob store
            return key
        if blobs_choice.kind == "fsspec":
            return f"{str(blobs_choice.options.get('url', '.')).rstrip('/')}/{key}"
        return f"galley://{key}"

    print_summary(console, run_config.workflow.summarize(result), where)
    metrics = run_config.adapters["metrics"]
    record = read_run_record(adapters, config.output, result.run_id)
    recorded = (metrics.parts or (metrics,)) if record is not None else ()  # none: no metrics
    for choice in recorded:
        if choice.kind == "jsonl":
            url = choice.options.get("url", "runs")
            console.print(f"metrics: {url}/{result.run_id}/metrics.jsonl")
        elif choice.kind == "sqlite":
            path = choice.options.get("path", "runs/metrics.db")
            console.print(f"metrics: {path} (run {result.run_id})")
    for line in tracker_lines(metrics.parts or (metrics,), record.trackers if record else {}):
        console.print(line, soft_wrap=True)


def tracker_lines(choices: Sequence[Any], links: Mapping[str, str]) -> list[str]:
    """Where each experiment tracker put the run, and how to look at it."""
    lines = []
    for choice in choices:
        o = choice.options
        if choice.kind == "tensorboard" and "tensorboard.logdir" in links:
            lines.append(f"tensorboard: tensorboard --logdir {links['tensorboard.logdir']}")
        elif choice.kind == "mlflow" and "mlflow.run_id" in links:
            uri = o.get("tracking_uri", "sqlite:///runs/mlflow.db")
            lines.append(f"mlflow: run {links['mlflow.run_id']} in {uri}")
        elif choice.kind == "wandb" and "wandb.run_id" in links:
            mode, folder = o.get("mode", "offline"), o.get("dir", "runs")
            sync = f" (offline: wandb sync {folder}/wandb/offline-run-*-{links['wandb.run_id']})"
            lines.append(
                f"wandb: run {links['wandb.run_id']}" + (sync if mode == "offline" else "")
            )
    return lines


def end_process(console: Console, code: int, run_id: str) -> NoReturn:
    """End a failed process of a run of several at once. Exiting normally, JAX would wait at
    a shutdown barrier for every process and, one of them gone, abort with a stack trace
    once its heartbeat times out."""
    index, count = process_role()
    console.print(
        f"this was process {index} of {count}: when one stops, every process of the run "
        f"stops; start them all again with --resume {run_id}",
        soft_wrap=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report_failure(
    console: Console, error: WorkflowError, workflow: str, config: Any, adapters: Adapters
) -> int:
    """Say what stopped the run and what to do next; the exit code says which kind it was."""
    interrupted = isinstance(error.__cause__, KeyboardInterrupt)
    console.print("interrupted" if interrupted else f"error: {error}", style="red", soft_wrap=True)
    for hint in error.hints:
        console.print(f"  {hint_line(hint, workflow)}", soft_wrap=True)
    if error.internal:
        console.print(
            "internal error: this is a bug (in galley, an adapter or a function of yours that "
            "the run called), not a problem with the settings; --log-file FILE keeps its traceback",
            style="red",
            soft_wrap=True,
        )
    saved = error.state.get("saved_checkpoints")
    try:
        resumable = read_run_record(adapters, config.output, config.run_id) is not None
        if resumable and not saved:  # stopped before it read its index: what a resume finds
            saved = tuple(read_index(adapters.blobs, RunPaths(config.output, config.run_id)))
    except GalleyError:
        resumable = False
    last = saved[-1] if isinstance(saved, tuple) and saved else None
    # Refused data or settings, or a reward that failed: the same run would fail the same way.
    needs_a_fix = isinstance(error.__cause__, (*INPUT_ERRORS, ScoreError))
    if resumable:
        start = f"step {last.step}" if last is not None else "the start (no checkpoint yet)"
        first = "fix the cause; then, " if needs_a_fix else ""
        console.print(
            f"{first}to continue from {start}: galley run {workflow} --resume {config.run_id}",
            soft_wrap=True,
        )
    else:
        console.print("nothing of the run was written; fix the cause and run it again")
    if interrupted:
        return INTERRUPTED
    # 2 promises that this attempt wrote nothing; once it recorded the run, a refusal is a
    # failure like any other.
    wrote = bool(error.state.get("run_recorded"))
    return 2 if isinstance(error.__cause__, INPUT_ERRORS) and not wrote else 1


def run_options(run: argparse.ArgumentParser) -> None:
    """The options of ``galley run WORKFLOW``."""
    run.add_argument(
        "--config", type=Path, help="TOML file with [<workflow>] and [adapters] tables"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting (repeatable; the settings are listed below)",
    )
    run.add_argument(
        "--adapters", metavar="KIND", help="use this adapter kind for every port (e.g. noop)"
    )
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this run from its newest good checkpoint, with its saved settings "
        "(settings given as well are checked against them)",
    )
    run.add_argument(
        "--accept-changes",
        action="store_true",
        help="with --resume: continue even if the given settings change what the run trains "
        "(the change is recorded in the run's run.json)",
    )
    run.add_argument("--log-file", type=Path, help="write every event as JSON lines to this file")
    run.add_argument(
        "--trace", type=Path, help="write the stages and port calls as a Chrome/Perfetto trace"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show info events on the console")
