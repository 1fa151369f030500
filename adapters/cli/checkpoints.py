"""After training: `galley runs list`, `galley checkpoints list|show|delete|best` (a run's
checkpoints, ``galley.core.runs.checkpoint_catalog``) and `galley models
register|list|show` (the model registry, ``galley.core.runs.registry``), on the blob and
metrics stores a run's config names."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from galley.adapters.cli.run_config import load_run_config
from galley.adapters.composition import build_adapters
from galley.core.errors import ConfigError, ValidationError
from galley.core.keys import check_name
from galley.core.runs.checkpoint_catalog import (
    CheckpointInfo,
    best_checkpoint,
    delete_checkpoint_at,
    list_checkpoints,
    list_runs,
    show_checkpoint,
)
from galley.core.runs.publish import export_for_publishing
from galley.core.runs.registry import describe, list_models, register, show_model


def _stores(args: argparse.Namespace) -> tuple[Any, str]:
    """The adapters and output folder a run with these options would use."""
    run_config = load_run_config("eval", args.config, args.set, args.adapters)
    return build_adapters(run_config.adapters), str(run_config.config.output)


def _run_and_step(text: str, need_step: bool) -> tuple[str, int | None]:
    run_id, _, step = text.partition(":")
    try:
        check_name(run_id, "RUN")
    except ValidationError as e:
        raise ConfigError(f"{text!r}: {e.reason}; give RUN[:STEP] with a run id") from None
    if need_step and not step:
        raise ConfigError(f"{text!r}: give RUN:STEP (the step to delete)")
    if step and not step.isdigit():
        raise ConfigError(f"{text!r}: the step after ':' must be a whole number")
    return run_id, int(step) if step else None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _metrics(info: CheckpointInfo, limit: int = 4) -> str:
    shown = sorted(info.metrics.items())[:limit]
    return ", ".join(f"{k} {v:.4g}" for k, v in shown) + (
        " ..." if len(info.metrics) > limit else ""
    )


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    adapters, output = _stores(args)
    table = Table(title=f"runs under {output}")
    table.add_column("run", no_wrap=True)
    for column in ("workflow", "started", "checkpoints", "newest step"):
        table.add_column(column)
    runs = list_runs(adapters, output)
    for run in runs:
        if run.problem is not None:
            table.add_row(run.run_id, Text("unreadable", style="red"), "-", "-", "-")
            continue
        started = datetime.datetime.fromtimestamp(run.started).strftime("%Y-%m-%d %H:%M")
        newest = "-" if run.newest_step is None else str(run.newest_step)
        table.add_row(run.run_id, run.workflow, started, str(run.checkpoints), newest)
    console.print(table)
    for run in runs:
        if run.problem is not None:
            console.print(f"{run.run_id}: {run.problem}", style="red", soft_wrap=True)
    return 0


def cmd_checkpoints(args: argparse.Namespace, console: Console) -> int:
    adapters, output = _stores(args)
    run_id, step = _run_and_step(args.run, need_step=args.action == "delete")
    if args.action == "list":
        table = Table(title=f"checkpoints of {run_id}")
        for column in ("step", "size", "sampler weights", "metrics at the step"):
            table.add_column(column)
        for info in list_checkpoints(adapters, run_id, output):
            table.add_row(
                str(info.step), _size(info.size), "yes" if info.sampler else "no", _metrics(info)
            )
        console.print(table)
        return 0
    if args.action == "delete":
        assert step is not None  # _run_and_step asked for it
        info = delete_checkpoint_at(adapters, run_id, step, force=args.force, output=output)
        console.print(f"deleted step {info.step} of {run_id} ({info.key})")
        return 0
    if args.action == "best":
        if not args.metric:
            raise ConfigError("give --metric NAME (e.g. eval/nll)")
        info = best_checkpoint(adapters, run_id, args.metric, maximize=args.max, output=output)
    else:
        info = show_checkpoint(adapters, run_id, step, output)
    verified = {True: "yes", False: f"NO: {info.problem}", None: "not checked"}[info.verified]
    console.print(f"run {run_id}, step {info.step}: {info.key}", soft_wrap=True)
    console.print(f"size: {_size(info.size)}; verified: {verified}", soft_wrap=True)
    console.print(f"sampler weights: {info.sampler or 'none'}", soft_wrap=True)
    for name, value in sorted(info.metrics.items()):
        console.print(f"  {name}: {value:.6g}")
    return 1 if info.verified is False else 0  # a damaged checkpoint is a failure to report


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file whose [adapters] name the stores")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--adapters", metavar="KIND", help="this adapter kind for every port")


def add_commands(sub: Any) -> None:
    runs = sub.add_parser("runs", help="list the runs under the output folder")
    runs.add_argument("action", choices=["list"])
    _store_options(runs)
    runs.set_defaults(handler=cmd_runs)
    checkpoints = sub.add_parser(
        "checkpoints", help="list, show, delete a run's checkpoints, or find the best"
    )
    checkpoints.add_argument("action", choices=["list", "show", "delete", "best"])
    checkpoints.add_argument("run", metavar="RUN[:STEP]")
    checkpoints.add_argument("--force", action="store_true", help="delete: even the newest good")
    checkpoints.add_argument("--metric", help="best: the metric to rank steps by")
    checkpoints.add_argument("--max", action="store_true", help="best: highest wins")
    _store_options(checkpoints)
    checkpoints.set_defaults(handler=cmd_checkpoints)
    models = sub.add_parser("models", help="register a run's checkpoint by name; list, show")
    models.add_argument("action", choices=["register", "list", "show"])
    models.add_argument("target", nargs="?", default="", metavar="RUN[:STEP] | NAME")
    models.add_argument("--name", help="register: the model's name")
    models.add_argument("--tag", action="append", default=[], help="register: a tag; list: only it")
    _store_options(models)
    models.set_defaults(handler=cmd_models)
    push = sub.add_parser("push", help="publish a run's checkpoint with a model card")
    push.add_argument("run", metavar="RUN[:STEP]")
    push.add_argument("--repo", help="a Hub model repo, USER/NAME (token: HF_TOKEN)")
    push.add_argument("--to", help="or any fsspec URL (a folder, s3://bucket/prefix)")
    push.add_argument("--merged", action="store_true", help="the merged model, not the adapter")
    push.add_argument("--private", action="store_true", help="a new Hub repo is private")
    push.add_argument("--force", action="store_true", help="--to: overwrite files already there")
    _store_options(push)
    push.set_defaults(handler=cmd_push)


def cmd_models(args: argparse.Namespace, console: Console) -> int:
    adapters, output = _stores(args)
    if args.action == "register":
        if not args.name:
            raise ConfigError("give --name NAME for the model")
        run_id, step = _run_and_step(args.target, need_step=False)
        entry = register(adapters, run_id, args.name, step=step, tags=args.tag, output=output)
        console.print(f"registered {entry.name}: {entry.run_id} step {entry.step} ({entry.state})")
        return 0
    if args.action == "list":
        table = Table(title="registered models")
        for column in ("name", "tags", "run", "step", "workflow", "base model"):
            table.add_column(column, no_wrap=column == "name")
        for e in list_models(adapters, args.tag[0] if args.tag else None, output):
            table.add_row(
                e.name, ", ".join(e.tags), e.run_id, str(e.step), e.workflow, e.base_model
            )
        console.print(table)
        return 0
    entry = show_model(adapters, args.target, output)
    for key, value in describe(entry).items():
        if value in (None, "", [], {}, ()):  # an empty field says nothing
            continue
        shown = value
        if key == "registered":
            shown = _iso(value)
        elif key == "metrics":
            shown = ", ".join(f"{k} {v:.6g}" for k, v in sorted(value.items()))
        elif key == "tags":
            shown = ", ".join(value)
        console.print(f"{key}: {shown}", soft_wrap=True)
    return 0


def _iso(seconds: float) -> str:
    """A time as an ISO 8601 date and time in UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_push(args: argparse.Namespace, console: Console) -> int:
    from galley.adapters.hf.publish import check_repo, open_target, push_to_hub, write_to_url

    if bool(args.repo) == bool(args.to):
        raise ConfigError("give either --repo USER/NAME (the Hub) or --to URL (any fsspec URL)")
    run_id, step = _run_and_step(args.run, need_step=False)
    if args.repo:  # the target is checked before the (slower) export
        check_repo(args.repo)
    else:
        open_target(args.to)
    adapters, output = _stores(args)
    files = export_for_publishing(adapters, run_id, step, merged=args.merged, output=output)
    if args.repo:
        url = push_to_hub(files, args.repo, private=args.private, message=f"{run_id} from galley")
        console.print(f"pushed {len(files)} files to {args.repo}: {url}", soft_wrap=True)
    else:
        written = write_to_url(files, args.to, force=args.force)
        console.print(f"wrote {len(written)} files under {args.to}", soft_wrap=True)
    return 0
