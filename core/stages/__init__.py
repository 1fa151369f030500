"""Pure-domain stages: each depends only on the ports (through ``ctx.adapters``) and core."""

from galley.core.runs.checkpoint_index import read_index
from galley.core.stages.checkpoint import (
    checkpoint_stage,
    export_sampler,
    init_weights,
    load_newest,
    load_run_weights,
    resume_from_checkpoint,
    save_run_record,
)
from galley.core.stages.data import check_split, load_dataset, load_split
from galley.core.stages.evaluate import evaluate_stage, heldout_nll, measure_heldout
from galley.core.stages.loop import training_loop
from galley.core.stages.render import render_dataset, render_split
from galley.core.stages.sample import (
    SampleComparison,
    ScoredAnswer,
    answer_and_score,
    check_sampling,
    sample_answers,
)
from galley.core.stages.session import start_session
from galley.core.stages.train import (
    InFlightStep,
    Pipeline,
    collect_results,
    drain,
    forward_backward,
    optim_step,
    plan_training,
)

__all__ = [
    "InFlightStep",
    "Pipeline",
    "SampleComparison",
    "ScoredAnswer",
    "answer_and_score",
    "check_sampling",
    "checkpoint_stage",
    "collect_results",
    "drain",
    "evaluate_stage",
    "export_sampler",
    "forward_backward",
    "heldout_nll",
    "init_weights",
    "check_split",
    "load_dataset",
    "load_newest",
    "load_run_weights",
    "load_split",
    "measure_heldout",
    "optim_step",
    "plan_training",
    "read_index",
    "render_dataset",
    "render_split",
    "resume_from_checkpoint",
    "sample_answers",
    "save_run_record",
    "start_session",
    "training_loop",
]
