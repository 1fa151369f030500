"""galley's domain: types, rendering, schedules, batching, losses and the stage engine.

Pure Python on attrs/cattrs/numpy/structlog: nothing here touches a framework or the network.
"""

from galley.core.adapter_set import PORT_NAMES, Adapters
from galley.core.domain.batching import BatchPlan, DataPosition
from galley.core.domain.chat import ROLES, Conversation, Message, TrainOn
from galley.core.domain.custom_loss import CustomLossOutput, forward_backward_custom
from galley.core.domain.losses import LOSS_NAMES, LossFn, reference_loss
from galley.core.domain.model_input import EncodedTextChunk, ModelInput
from galley.core.domain.rendering import (
    RenderedExample,
    Renderer,
    RoleColonRenderer,
    Truncation,
    fit_conversation,
    to_datum,
)
from galley.core.domain.schedules import LRSchedule, ScheduleKind, lr_at
from galley.core.domain.tensors import TensorData
from galley.core.domain.tokenizer import Tokenizer
from galley.core.domain.types import (
    AdamParams,
    CheckpointRef,
    Completion,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    LoraConfig,
    ModelInfo,
    ModelRef,
    OptimStepResult,
    SampledSequence,
    SamplingParams,
    SessionConfig,
)
from galley.core.errors import (
    ConfigError,
    DataError,
    DataFlowError,
    GalleyError,
    LockedError,
    NotFoundError,
    PortTimeoutError,
    ServiceError,
    TransientError,
    ValidationError,
    WorkflowError,
)
from galley.core.logs import quiet_unless_configured
from galley.core.runs.records import CheckpointRecord, MetricRecord, RunOutcome, TrackedRun
from galley.core.serialization import from_data, from_json, to_data, to_json

__all__ = [
    "LOSS_NAMES",
    "PORT_NAMES",
    "ROLES",
    "AdamParams",
    "Adapters",
    "BatchPlan",
    "CheckpointRecord",
    "CheckpointRef",
    "Completion",
    "ConfigError",
    "Conversation",
    "CustomLossOutput",
    "DataError",
    "DataFlowError",
    "DataPosition",
    "Datum",
    "EncodedTextChunk",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "GalleyError",
    "LRSchedule",
    "LockedError",
    "LoraConfig",
    "LossFn",
    "Message",
    "MetricRecord",
    "ModelInfo",
    "ModelInput",
    "ModelRef",
    "NotFoundError",
    "OptimStepResult",
    "PortTimeoutError",
    "ServiceError",
    "RenderedExample",
    "Renderer",
    "RoleColonRenderer",
    "RunOutcome",
    "SampledSequence",
    "SamplingParams",
    "ScheduleKind",
    "SessionConfig",
    "TensorData",
    "Tokenizer",
    "TrackedRun",
    "TrainOn",
    "TransientError",
    "Truncation",
    "ValidationError",
    "WorkflowError",
    "fit_conversation",
    "forward_backward_custom",
    "from_data",
    "from_json",
    "lr_at",
    "reference_loss",
    "to_data",
    "to_datum",
    "to_json",
]

quiet_unless_configured()
