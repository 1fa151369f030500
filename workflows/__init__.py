"""Workflows: compositions of core stages. Each is a config class, a build function, a ``run``
entry point (over ``galley.core.engine.run.run_workflow``) and a summary of its result; the
registry below is what the CLI runs (``galley run <name>``) and lists (``galley workflows``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from galley.core.engine import Workflow
from galley.core.runs.summary import Summary
from galley.workflows import distill, dpo, rl, sft
from galley.workflows import eval as evaluation


@attrs.frozen
class WorkflowSpec:
    name: str
    description: str
    config_type: type[Any]
    build: Callable[[Any], Workflow]
    run: Callable[..., Any]  # (config, adapters, *, observers, retry, accept_changes) -> result
    summarize: Callable[[Any], Summary]  # result -> what the CLI shows


WORKFLOWS: dict[str, WorkflowSpec] = {
    "sft": WorkflowSpec(
        "sft",
        sft.DESCRIPTION,
        sft.SFTConfig,
        sft.build_workflow,
        sft.run,
        sft.summarize,
    ),
    "dpo": WorkflowSpec(
        "dpo",
        dpo.DESCRIPTION,
        dpo.DPOConfig,
        dpo.build_workflow,
        dpo.run,
        dpo.summarize,
    ),
    "rl": WorkflowSpec(
        "rl",
        rl.DESCRIPTION,
        rl.RLConfig,
        rl.build_workflow,
        rl.run,
        rl.summarize,
    ),
    "distill": WorkflowSpec(
        "distill",
        distill.DESCRIPTION,
        distill.DistillConfig,
        distill.build_workflow,
        distill.run,
        distill.summarize,
    ),
    "eval": WorkflowSpec(
        "eval",
        evaluation.DESCRIPTION,
        evaluation.EvalConfig,
        evaluation.build_workflow,
        evaluation.run,
        evaluation.summarize,
    ),
}

__all__ = ["WORKFLOWS", "WorkflowSpec", "distill", "dpo", "evaluation", "rl", "sft"]
