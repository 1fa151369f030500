"""``galley plan``: the device memory a run's training step takes, per device, before
anything loads (the model's config.json only), from the same settings ``galley run`` takes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from galley.adapters.cli.run_config import load_run_config
from galley.adapters.composition import build_one
from galley.adapters.jax.kinds import JaxTrainingOptions
from galley.adapters.settings import settings_from_mapping
from galley.core.domain.types import LoraConfig
from galley.core.errors import ConfigError
from galley.workflows import WORKFLOWS


def add_command(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="device memory per device of a run's training step, before anything loads",
    )
    plan.add_argument("workflow", choices=sorted(WORKFLOWS))
    plan.add_argument("--config", type=Path, help="the run's TOML file, as for galley run")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--adapters", metavar="KIND")
    plan.add_argument(
        "--devices",
        type=int,
        help="devices to plan for (default: the mesh's data x fsdp x tensor, data 1 if unset)",
    )
    plan.add_argument(
        "--memory",
        metavar="SIZE",
        help="device memory per device (24GiB, 80GB): recommend the quickest levers that fit",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object instead")
    plan.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    import jax.numpy as jnp

    from galley.adapters.jax.batching import bucket
    from galley.adapters.jax.config import parse_config
    from galley.adapters.jax.losses import checked_chunk
    from galley.adapters.jax.mesh import MeshShape
    from galley.adapters.jax.model import checked_remat
    from galley.adapters.jax.plan import (
        Levers,
        describe,
        parse_bytes,
        plan_memory,
        recommend,
        size_text,
    )

    run_config = load_run_config(args.workflow, args.config, args.set, args.adapters)
    config, choice = run_config.config, run_config.adapters["training"]
    if choice.kind != "jax":
        raise ConfigError(
            f"galley plan knows the jax training adapter; this run trains with {choice.kind!r}"
        )
    options = settings_from_mapping(JaxTrainingOptions, choice.options, "[adapters.training] (jax)")
    mesh = options.mesh
    devices = args.devices or (mesh.data or 1) * mesh.fsdp * mesh.tensor
    model_config = parse_config(_config_json(config.base_model, run_config), config.base_model)
    length = bucket(config.max_length, options.length_buckets)
    lora = LoraConfig(rank=config.lora_rank, alpha=config.lora_alpha) if config.lora_rank else None
    rows = rows_per_step(args.workflow, config)
    budget = parse_bytes(args.memory) if args.memory else None

    def plan_with(levers: Levers, shape: MeshShape) -> Any:
        return plan_memory(
            model_config,
            lora,
            dtype=jnp.dtype(options.dtype),
            mesh=shape,
            devices=devices,
            rows=rows,
            length=length,
            levers=levers,
        )

    where = "[adapters.training] (jax)"
    given = Levers(
        config.micro_batch_size,
        checked_remat(options.remat, f"{where} remat"),
        checked_chunk(options.logits_chunk, f"{where} logits_chunk"),
        options.scan_layers,
    )
    plan = plan_with(given, mesh)
    advice = recommend(budget, plan_with, rows=rows, devices=devices, mesh=mesh) if budget else None
    if args.json:
        out: dict[str, Any] = {
            "mesh": dict(plan.mesh),
            "devices": devices,
            "bytes_per_device": dict(plan.rows()),
        }
        if advice is not None:
            out["recommended"] = {
                "settings": _settings(advice.plan),
                "bytes_per_device": dict(advice.plan.rows()),
                "saves": dict(advice.savings),
            }
        console.print(json.dumps(out), soft_wrap=True)
        return 0
    what = "full fine-tuning" if lora is None else f"LoRA rank {config.lora_rank}"
    console.print(
        f"{config.base_model}: {what}, {options.dtype}, {rows} sequences x {length} tokens "
        f"a step, on {devices} device(s)"
    )
    _print_plan(console, plan, f"as set ({describe(plan)})")
    if advice is not None and budget is not None:
        _print_plan(console, advice.plan, f"fits {size_text(budget)}: {describe(advice.plan)}")
        table = Table("lever alone", "saves")
        for name, saved in advice.savings:
            table.add_row(name, size_text(saved))
        console.print(table)
        console.print(
            "set: " + " ".join(f"--set {k}={v}" for k, v in _settings(advice.plan).items())
        )
    return 0


def _settings(plan: Any) -> dict[str, Any]:
    """The settings that pick ``plan``'s levers and mesh, as ``--set`` takes them (those
    left at their defaults left out)."""
    from galley.adapters.jax.plan import Levers

    defaults = Levers().settings()
    settings = {
        k: str(v).lower() if isinstance(v, bool) else v
        for k, v in plan.levers.settings().items()
        if v != defaults[k]
    }
    if plan.mesh["fsdp"] > 1:
        settings["adapters.training.mesh"] = f"{{fsdp = {plan.mesh['fsdp']}}}"
    return settings


def _print_plan(console: Console, plan: Any, title: str) -> None:
    from galley.adapters.jax.plan import GIB

    sizes = ", ".join(f"{axis} {size}" for axis, size in plan.mesh.items())
    console.print(f"{title}; mesh {sizes}")
    table = Table("per device", "GiB", "bytes")
    for label, size in plan.rows():
        table.add_row(label, f"{size / GIB:.3f}", f"{size:,}")
    console.print(table)


def rows_per_step(workflow: str, config: Any) -> int:
    """The sequences one training step of ``workflow`` takes: its batch, times two for DPO's
    pairs, times the group for RL's and distillation's sampled groups."""
    if not hasattr(config, "batch_size"):
        raise ConfigError(f"galley plan plans a training step; the {workflow} workflow trains none")
    rows = int(config.batch_size) * int(getattr(config, "group_size", 1))
    return 2 * rows if workflow == "dpo" else rows


def _config_json(base_model: str, run_config: Any) -> Any:
    """The model's config.json: from its folder, or the only file fetched from the hub."""
    folder = Path(base_model).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
    else:
        hub = build_one("hub", run_config.adapters["hub"], {})
        path = hub.download(base_model, "config.json")
    from galley.adapters.hf.model_files import read_json

    return read_json(path)
