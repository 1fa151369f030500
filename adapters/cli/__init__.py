"""The ``galley`` command: a driving adapter over the workflows and the composition root.
``galley run`` is in ``run.py``; the lifecycle commands, ``serve`` and ``plan`` in their own
modules."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import attrs
from rich.console import Console
from rich.table import Table

from galley.adapters.cli.checkpoints import add_commands as add_checkpoint_commands
from galley.adapters.cli.hints import print_error
from galley.adapters.cli.logging import RedactingConsole
from galley.adapters.cli.plan import add_command as add_plan_command
from galley.adapters.cli.run import INTERRUPTED, cmd_run, run_options
from galley.adapters.cli.serve import add_command as add_serve_command
from galley.adapters.cli.settings_help import settings_help
from galley.adapters.composition import REGISTRY, NoOptions, adapter_kinds
from galley.adapters.fsspec.kinds import galley_home
from galley.adapters.helpers.redaction import redact_argv, redact_text
from galley.adapters.settings import read_text
from galley.core.errors import (
    ConfigError,
    GalleyError,
    ServiceError,
    WorkflowError,
)
from galley.workflows import WORKFLOWS


def cmd_sample(args: argparse.Namespace, console: Console) -> int:
    from galley.adapters.cli.sample_plot import registered_sampler, sample

    prompts = list(args.prompt)
    if args.prompts_file is not None:
        lines = read_text(args.prompts_file, "--prompts-file").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError("give a prompt or --prompts-file")
    if (args.checkpoint is None) == (args.model is None):
        raise ConfigError("give --checkpoint FOLDER or --model registry:NAME")
    checkpoint = args.checkpoint or registered_sampler(args.model)
    sample(console, checkpoint, prompts, args.max_tokens, args.temperature, args.renderer)
    return 0


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from galley.adapters.cli.sample_plot import plot

    run_dir = args.run if args.run.is_dir() else Path(galley_home()) / "runs" / args.run
    path, titles = plot(run_dir)
    console.print(f"wrote {path} ({', '.join(titles)})", soft_wrap=True)
    return 0


def cmd_workflows(args: argparse.Namespace, console: Console) -> int:
    for spec in WORKFLOWS.values():
        workflow = spec.build(spec.config_type())
        console.print(f"{spec.name}: {spec.description}", style="bold")
        console.print(f"  ports: {', '.join(sorted(workflow.ports))}")
        for stage in workflow.stages():
            ports = f" [{', '.join(sorted(stage.ports))}]" if stage.ports else ""
            replaces = sorted(getattr(stage, "replaces", ()))
            note = f" (replaces {', '.join(replaces)})" if replaces else ""
            console.print(f"  - {stage.name}{ports}: {getattr(stage, 'doc', '')}{note}")
    return 0


def cmd_adapters(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="adapters per port")
    for column in ("port", "kind", "options", "from", "description"):
        table.add_column(column)
    for port, kinds in adapter_kinds().items():
        for kind in kinds.values():
            options = ", ".join(f.name for f in attrs.fields(kind.options or NoOptions))
            table.add_row(port, kind.kind, options or "-", kind.origin, kind.description)
    console.print(table)
    for problem in REGISTRY.problems:
        console.print(f"left out: {problem}", style="yellow", soft_wrap=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="galley", description="Compose and run LLM fine-tuning workflows."
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a workflow",
        description="Run a workflow; `galley run WORKFLOW --help` lists its settings.",
    )
    workflows = run.add_subparsers(dest="workflow", required=True, metavar="WORKFLOW")
    for spec in WORKFLOWS.values():
        one = workflows.add_parser(
            spec.name,
            help=spec.description,
            description=spec.description,
            epilog=settings_help(spec.config_type),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        run_options(one)
        one.set_defaults(handler=cmd_run)
    sample = sub.add_parser("sample", help="answer prompts with exported sampler weights")
    sample.add_argument("prompt", nargs="*", help="user messages to answer")
    sample.add_argument("--checkpoint", type=Path, help="a runs/<id>/sampler/<name> folder")
    sample.add_argument(
        "--model", help="or registry:NAME, a registered model saved with sampler weights"
    )
    sample.add_argument("--prompts-file", type=Path, help="one prompt per line")
    sample.add_argument("--max-tokens", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=0.0)
    sample.add_argument("--renderer", default="role_colon")
    sample.set_defaults(handler=cmd_sample)
    plot = sub.add_parser(
        "plot", help="chart what a run recorded (loss, rewards, KL, ...) as a PNG"
    )
    plot.add_argument("run", type=Path, help="a run id under ./runs, or a run folder")
    plot.set_defaults(handler=cmd_plot)
    sub.add_parser("workflows", help="list workflows, their stages and ports").set_defaults(
        handler=cmd_workflows
    )
    sub.add_parser("adapters", help="list the adapter kinds per port").set_defaults(
        handler=cmd_adapters
    )
    add_checkpoint_commands(sub)
    add_serve_command(sub)
    add_plan_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done. 1: a run or a service failed while running (the message says how to
    continue). 2: the input was refused, before anything was written. 130: interrupted."""
    args = parser().parse_args(argv)
    # Libraries read the program's arguments (W&B records them with a run): once parsed, the
    # process's own copy keeps no secret given on the command line.
    sys.argv = redact_argv(sys.argv)
    console = RedactingConsole(markup=False, highlight=False)
    try:
        code: int = args.handler(args, console)
        return code
    except (WorkflowError, ServiceError) as e:
        print_error(console, e, getattr(args, "workflow", None))
        return 1
    except GalleyError as e:
        print_error(console, e, getattr(args, "workflow", None))
        return 2
    except KeyboardInterrupt:
        console.print("interrupted", style="red")
        return INTERRUPTED
    except Exception:  # a crash: its traceback, as any error galley prints, without secrets
        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        console.print(
            "internal error: this is a bug in galley or an adapter; the traceback above says "
            "where (secrets in it are redacted)",
            style="red",
            soft_wrap=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
