"""Sample stage: answer held-out prompts with the base and the fine-tuned model, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from galley.core.chat import Conversation
from galley.core.engine import StageContext, stage
from galley.core.errors import ValidationError
from galley.core.records import EVAL
from galley.core.rendering import Renderer
from galley.core.types import CheckpointRef, ModelRef, SamplingParams

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@attrs.frozen
class SampleComparison:
    prompt: str
    reference: str
    base: str
    tuned: str


def split_last_answer(conversation: Conversation) -> tuple[Conversation, str] | None:
    """The conversation up to its last assistant message, and that message's text."""
    i = conversation.last_assistant_index
    if not i:  # None, or an assistant message with nothing before it
        return None
    return Conversation(conversation.messages[:i]), conversation.messages[i].content


def exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


@stage(reads=("session", "num_samples", "sample_max_tokens"), ports=("training",))
def check_sampling(
    ctx: StageContext, session: TrainingSession, num_samples: int, sample_max_tokens: int
) -> dict[str, Any]:
    """Refuse sample settings the model cannot meet before training, not after it."""
    context = session.model_info.max_context
    if num_samples and sample_max_tokens >= context:
        raise ValidationError(
            "sample_max_tokens",
            f"{sample_max_tokens} new tokens leave no room for a prompt in the model's context "
            f"of {context} tokens; give fewer (or num_samples=0)",
        )
    return {}


@stage(
    reads=(
        "eval_rows",
        "chat_renderer",
        "base_model",
        "sampler",
        "num_samples",
        "sample_max_tokens",
        "total_steps",
    ),
    writes=("samples",),
    ports=("completer", "metrics"),
)
def sample_answers(
    ctx: StageContext,
    eval_rows: Sequence[Conversation],
    chat_renderer: Renderer,
    base_model: str,
    sampler: CheckpointRef,
    num_samples: int,
    sample_max_tokens: int,
    total_steps: int,
) -> dict[str, Any]:
    """Greedy answers of the base and the tuned model to held-out prompts; exact-match scores."""
    pairs = [p for p in (split_last_answer(c) for c in eval_rows) if p is not None][:num_samples]
    if not pairs:
        return {"samples": ()}
    prompts = [chat_renderer.generation_prompt(conv) for conv, _ in pairs]
    params = SamplingParams(
        max_tokens=sample_max_tokens, temperature=0.0, stop=chat_renderer.stop_sequences
    )
    completer = ctx.adapters.completer
    base = completer.complete_batch(prompts, params, model=ModelRef(base_model))
    tuned = completer.complete_batch(prompts, params, model=ModelRef(base_model, sampler))
    samples = tuple(
        SampleComparison(conv.messages[-1].content, ref, b.text.strip(), t.text.strip())
        for (conv, ref), b, t in zip(pairs, base, tuned, strict=True)
    )
    n = len(samples)
    ctx.record_metrics(
        EVAL,
        total_steps,
        {
            "eval/exact_match_base": sum(exact_match(s.base, s.reference) for s in samples) / n,
            "eval/exact_match": sum(exact_match(s.tuned, s.reference) for s in samples) / n,
        },
    )
    return {"samples": samples}
