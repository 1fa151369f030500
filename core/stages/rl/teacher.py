"""Distillation's stages: a teacher session, the teacher's per-token advantages for the RL
step, the held-out KL to the teacher, and (off-policy) the teacher's answers as an SFT
dataset.

The teacher is a run (its newest good checkpoint, on the base model and LoRA shape it trained
with), a checkpoint's key (on the student's base model), or a model folder or Hub id as it
is. It must tokenize as the student does: anything else would compare log-probabilities of
different tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from galley.core.domain.distillation import reverse_kl, teacher_advantages, tokenizer_mismatch
from galley.core.domain.rl import Normalisation
from galley.core.domain.weights_source import SourceForm, WeightsSource
from galley.core.engine import StageContext, stage
from galley.core.errors import ConfigError, Hint, NotFoundError, Remedy
from galley.core.keys import join_key
from galley.core.runs.layout import RunPaths
from galley.core.runs.manifest import MANIFEST_NAME
from galley.core.runs.registry import resolve_start
from galley.core.runs.run_record import plain_saved_settings, read_run_record
from galley.core.runs.sessions import run_session_config
from galley.core.sections import BaseModelSection, ModelSection, PolicySection
from galley.core.stages.checkpoint import load_init_from
from galley.core.stages.rl.advantages import Rollouts, add_token_advantages, rollout_data
from galley.core.stages.rl.data import RenderedTask
from galley.core.stages.rl.sampling import RolloutRecipe, Scored, sample_and_score
from galley.core.stages.rl.step import reward_eval

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession

NO_TEACHER = (
    "teacher: distillation learns from a teacher, and none was given. Train one with the sft "
    "workflow and give its run id, or a checkpoint's key, a model folder or a Hub id"
)


@attrs.frozen
class TeacherAdvantages:
    """Every completion counts; each sampled token's advantage is the teacher's
    log-probability of it minus the student's (``galley.core.domain.distillation``)."""

    teacher: TrainingSession
    normalisation: Normalisation

    def __call__(
        self, ctx: StageContext, scored: Scored, step: int
    ) -> tuple[Rollouts, dict[str, float]]:
        rollouts = rollout_data(scored, False, self.normalisation, rewarded=False)
        student, taught = teacher_logprobs(ctx, self.teacher, rollouts, step)
        rollouts = add_token_advantages(rollouts, teacher_advantages(student, taught))
        return rollouts, {"teacher_kl": reverse_kl(student, taught)}


def teacher_logprobs(
    ctx: StageContext, teacher: TrainingSession, rollouts: Rollouts, step: int
) -> tuple[list[Any], list[Any]]:
    """The student's (sampler's) and the teacher's log-probabilities of the sampled tokens."""
    scoring = teacher.forward(list(rollouts.data), "cross_entropy")
    taught = rollouts.sampled(ctx.wait(scoring, "teacher.forward", step).logprobs)
    student = rollouts.sampled([d.loss_fn_inputs["logprobs"].data for d in rollouts.data])
    return student, taught


def open_teacher(
    ctx: StageContext, teacher: WeightsSource, model: BaseModelSection, seed: int, paths: RunPaths
) -> tuple[TrainingSession, str]:
    """A session holding the teacher's weights, and the base model it runs on."""
    output = paths.output
    teacher = resolve_start(ctx.adapters, teacher, output)  # registry:NAME: its checkpoint
    named = teacher.form is SourceForm.NAME
    record = read_run_record(ctx.adapters, output, teacher.text) if named else None
    shape = BaseModelSection(model.base_model, model.lora_rank, model.lora_alpha)
    if record is not None:  # a run: its own base model and LoRA shape
        saved = plain_saved_settings(record)
        shape = BaseModelSection(
            str(saved.get("base_model", shape.base_model)),
            int(saved.get("lora_rank", shape.lora_rank)),
            float(saved.get("lora_alpha", shape.lora_alpha)),
        )
    checkpoint = teacher.form is SourceForm.SERVICE or (
        teacher.form is SourceForm.PATH
        and ctx.adapters.blobs.exists(join_key(teacher.text, MANIFEST_NAME))
    )
    if record is None and not checkpoint:  # a model folder or Hub id, as it is
        shape = attrs.evolve(shape, base_model=teacher.text)
    base_model = shape.base_model
    config = run_session_config(shape, seed, paths, "teacher")
    try:
        session = ctx.adapters.training.start_session(config)
    except NotFoundError as e:
        if record is not None or checkpoint:
            raise
        raise NotFoundError(
            f"teacher {teacher.text!r} is no run under {output!r}, no checkpoint, and no model "
            f"folder or Hub id the hub finds ({e})"
        ) from e
    if record is not None or checkpoint:
        load_init_from(ctx, session, teacher, paths)
    return session, base_model


@stage(
    writes=("teacher_session", "advantages"),
    ports=("training", "blobs"),
    replaces=("advantages",),  # RL's reward advantages: the teacher's grade instead
)
def start_teacher(
    ctx: StageContext,
    session: TrainingSession,
    teacher: WeightsSource | None,
    model: ModelSection,
    seed: int,
    paths: RunPaths,
    policy: PolicySection,
) -> dict[str, Any]:
    """Open the teacher (refused when there is none, or when it tokenizes otherwise than
    the student) and make the RL step train on its advantages (``TeacherAdvantages``)."""
    if not teacher:
        make_one = Hint(Remedy.RUN, workflow="sft")
        give_it = Hint(Remedy.SET, setting="teacher", value="<run id>")
        raise ConfigError(NO_TEACHER).with_hints(make_one, give_it)
    teacher_session, teacher_base = open_teacher(ctx, teacher, model, seed, paths)
    mismatch = tokenizer_mismatch(session.tokenizer, teacher_session.tokenizer)
    if mismatch is not None:
        raise ConfigError(
            f"teacher: {teacher.text!r} (on {teacher_base!r}) tokenizes otherwise than the "
            f"student's base model {model.base_model!r}: {mismatch}; distil from a teacher of "
            "the same family"
        )
    ctx.log.info("teacher.started", teacher=teacher.text, base_model=teacher_base)
    advantages = TeacherAdvantages(teacher_session, policy.loss_normalisation)
    return {"teacher_session": teacher_session, "advantages": advantages}


def distill_eval(
    ctx: StageContext,
    session: TrainingSession,
    eval_data: Sequence[RenderedTask],
    teacher_session: TrainingSession,
    recipe: RolloutRecipe,
) -> dict[str, float]:
    """Held-out rewards of the greedy answers (``reward_eval``) and the student's KL to the
    teacher per token, on one answer to each eval prompt sampled at temperature 1."""
    metrics = reward_eval(ctx, session, eval_data, recipe)
    sampler = ctx.wait(session.save_weights_and_get_sampling_client(), "training.sampling_client")
    scored = sample_and_score(sampler, eval_data, recipe.params(1.0, recipe.seed), 1, ())
    rollouts = rollout_data(scored, False, "tokens", rewarded=False)
    student, taught = teacher_logprobs(ctx, teacher_session, rollouts, 0)
    return metrics | {"eval/teacher_kl": reverse_kl(student, taught)}


def answer(text: str) -> dict[str, str]:
    """A sampled answer as a message: without the space a chat format puts before it."""
    return {"role": "assistant", "content": text.strip()}


@stage(
    writes=("teacher_dataset",),
    ports=("training", "blobs"),
)
def write_teacher_dataset(
    ctx: StageContext,
    teacher_session: TrainingSession,
    train_data: Sequence[RenderedTask],
    eval_data: Sequence[RenderedTask],
    recipe: RolloutRecipe,
    paths: RunPaths,
) -> dict[str, Any]:
    """Off-policy distillation's data: the teacher's greedy answer to every prompt, as chat
    rows (``train.jsonl``, ``eval.jsonl``) under the run, for ``galley run sft``."""
    sampler = ctx.wait(
        teacher_session.save_weights_and_get_sampling_client(), "teacher.sampling_client"
    )
    params = recipe.greedy
    folder = paths.teacher_data
    for split, tasks in (("train", train_data), ("eval", eval_data)):
        scored = sample_and_score(sampler, tasks, params, 1, ())
        rows = (
            {"messages": [*map(attrs.asdict, t.task.prompt.messages), answer(text)]}
            for t, text in zip(tasks, scored.texts, strict=True)
        )
        data = "".join(json.dumps(row) + "\n" for row in rows).encode()
        ctx.adapters.blobs.write(join_key(folder, f"{split}.jsonl"), data)
    ctx.log.info("teacher.dataset_written", key=folder, rows=len(train_data) + len(eval_data))
    return {"teacher_dataset": folder}


__all__ = [
    "TeacherAdvantages",
    "distill_eval",
    "start_teacher",
    "write_teacher_dataset",
]
