"""Workflows: compositions of core stages, each with a config and a ``run`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from galley.core.engine import Workflow
from galley.workflows import sft


@attrs.frozen
class WorkflowSpec:
    name: str
    description: str
    config_type: type[Any]
    build: Callable[[Any], Workflow]
    run: Callable[..., Any]


WORKFLOWS: dict[str, WorkflowSpec] = {
    "sft": WorkflowSpec(
        "sft",
        "Supervised fine-tuning on chat data (LoRA or full), with held-out eval.",
        sft.SFTConfig,
        sft.build_workflow,
        sft.run,
    ),
}

__all__ = ["WORKFLOWS", "WorkflowSpec", "sft"]
