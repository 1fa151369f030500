"""DPO's stages: preference pairs in, reference log-probabilities once, then the preference
step (by linearisation, on any TrainingClient) and its held-out metrics."""

from galley.core.stages.dpo.data import load_preferences, render_pairs
from galley.core.stages.dpo.reference import (
    Reference,
    ReferenceLogprobs,
    ReferenceScorer,
    answer_logprobs_of,
    plan_reference,
    reference_logprobs,
)
from galley.core.stages.dpo.train import preference_eval, preference_step

__all__ = [
    "Reference",
    "ReferenceLogprobs",
    "ReferenceScorer",
    "answer_logprobs_of",
    "load_preferences",
    "preference_eval",
    "plan_reference",
    "preference_step",
    "reference_logprobs",
    "render_pairs",
]
