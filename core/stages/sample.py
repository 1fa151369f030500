"""Sample stage: answer held-out prompts with the base and the fine-tuned model, side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from galley.core.domain.chat import Conversation
from galley.core.domain.rendering import Renderer
from galley.core.domain.scorers import Scorer, resolve_scorer
from galley.core.domain.types import CheckpointRef, ModelRef, SamplingParams
from galley.core.engine import StageContext, stage
from galley.core.errors import ValidationError
from galley.core.runs.records import EVAL
from galley.core.sections import BaseModelSection, SamplingSection

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@attrs.frozen
class EvaluatedWeights:
    """The weights an evaluation answers with: the base model, or a run's checkpoint exported
    for sampling; and the step they were trained to (0 for a base model)."""

    model: ModelRef
    step: int


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


@stage(ports=("training",))
def check_sampling(
    ctx: StageContext, session: TrainingSession, sampling: SamplingSection
) -> dict[str, Any]:
    """Refuse sample settings the model cannot meet before training, not after it."""
    context = session.model_info.max_context
    num_samples, sample_max_tokens = sampling.num_samples, sampling.sample_max_tokens
    if num_samples and sample_max_tokens >= context:
        raise ValidationError(
            "sample_max_tokens",
            f"{sample_max_tokens} new tokens leave no room for a prompt in the model's context "
            f"of {context} tokens; give fewer (or num_samples=0)",
        )
    return {}


def held_out_prompts(
    eval_rows: Sequence[Conversation], limit: int
) -> list[tuple[Conversation, str]]:
    """Up to ``limit`` held-out conversations cut before their last answer, with the answer."""
    return [p for p in (split_last_answer(c) for c in eval_rows) if p is not None][:limit]


def greedy_answers(
    ctx: StageContext,
    pairs: Sequence[tuple[Conversation, str]],
    chat_renderer: Renderer,
    max_tokens: int,
    model: ModelRef,
) -> list[str]:
    """The model's greedy answer to each prompt, stripped."""
    prompts = [chat_renderer.generation_prompt(conv) for conv, _ in pairs]
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, stop=chat_renderer.stop_sequences
    )
    return [
        c.text.strip() for c in ctx.adapters.completer.complete_batch(prompts, params, model=model)
    ]


def example_of(conversation: Conversation, reference: str) -> dict[str, Any]:
    """What a scorer is given: the conversation up to the answer, and the reference answer."""
    messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
    return {"messages": messages, "reference": reference}


def mean_score(
    scorer: Scorer, pairs: Sequence[tuple[Conversation, str]], answers: Sequence[str]
) -> float:
    scores = [scorer(example_of(c, ref), a) for (c, ref), a in zip(pairs, answers, strict=True)]
    return sum(scores) / len(scores)


@stage(
    writes=("samples",),
    ports=("completer", "metrics"),
)
def sample_answers(
    ctx: StageContext,
    eval_rows: Sequence[Conversation],
    chat_renderer: Renderer,
    model: BaseModelSection,
    sampler: CheckpointRef,
    sampling: SamplingSection,
    total_steps: int,
) -> dict[str, Any]:
    """Greedy answers of the base and the tuned model to held-out prompts; exact-match scores."""
    pairs = held_out_prompts(eval_rows, sampling.num_samples)
    if not pairs:
        return {"samples": ()}
    max_tokens = sampling.sample_max_tokens
    base = greedy_answers(ctx, pairs, chat_renderer, max_tokens, ModelRef(model.base_model))
    tuned = greedy_answers(
        ctx, pairs, chat_renderer, max_tokens, ModelRef(model.base_model, sampler)
    )
    samples = tuple(
        SampleComparison(conv.messages[-1].content, ref, b, t)
        for (conv, ref), b, t in zip(pairs, base, tuned, strict=True)
    )
    exact = resolve_scorer("exact_match")
    ctx.record_metrics(
        EVAL,
        total_steps,
        {
            "eval/exact_match_base": mean_score(exact, pairs, base),
            "eval/exact_match": mean_score(exact, pairs, tuned),
        },
    )
    return {"samples": samples}


@attrs.frozen
class ScoredAnswer:
    prompt: str
    reference: str
    answer: str
    scores: Mapping[str, float]


@stage(
    writes=("answers",),
    ports=("completer", "metrics"),
)
def answer_and_score(
    ctx: StageContext,
    eval_rows: Sequence[Conversation],
    chat_renderer: Renderer,
    evaluated: EvaluatedWeights,
    sampling: SamplingSection,
    scorers: Sequence[str],
) -> dict[str, Any]:
    """Greedy answers of the model evaluated (the base, or a run's weights) to held-out
    prompts, each scored by every scorer; the mean of each is recorded as ``eval/<name>``."""
    pairs = held_out_prompts(eval_rows, sampling.num_samples)
    if not pairs:
        return {"answers": ()}
    resolved = [resolve_scorer(spec) for spec in scorers]
    answers = greedy_answers(ctx, pairs, chat_renderer, sampling.sample_max_tokens, evaluated.model)
    scored = tuple(
        ScoredAnswer(
            conv.messages[-1].content,
            ref,
            answer,
            {s.name: s(example_of(conv, ref), answer) for s in resolved},
        )
        for (conv, ref), answer in zip(pairs, answers, strict=True)
    )
    means = {
        f"eval/{s.name}": sum(a.scores[s.name] for a in scored) / len(scored) for s in resolved
    }
    ctx.record_metrics(EVAL, evaluated.step, means)
    return {"answers": scored}
