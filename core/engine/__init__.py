"""The stage engine: declare stages and loops, check the data flow, run with retries."""

from galley.core.engine.dataflow import check_data_flow
from galley.core.engine.runner import Observer, Runner, StageContext, Stream
from galley.core.engine.stage import (
    Every,
    FunctionStage,
    Loop,
    Stage,
    Step,
    Workflow,
    reads_of,
    stage,
)
from galley.core.retry import NO_RETRY, RetryPolicy, call_with_retry

__all__ = [
    "NO_RETRY",
    "Every",
    "FunctionStage",
    "Loop",
    "Observer",
    "RetryPolicy",
    "Runner",
    "Stage",
    "StageContext",
    "Step",
    "Stream",
    "Workflow",
    "call_with_retry",
    "check_data_flow",
    "reads_of",
    "stage",
]
