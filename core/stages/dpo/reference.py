"""Reference log-probabilities: every pair's answers scored once, by the weights the run
starts from (or an explicit reference model), before any step; saved with the run so a
resumed run reads them back instead of scoring with weights that have since moved."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from galley.core.domain.distillation import tokenizer_mismatch
from galley.core.domain.dpo import PreferenceObjective
from galley.core.domain.preferences import AnswerLogprobs, RenderedPair, pair_datums, summed_answers
from galley.core.domain.types import SessionConfig
from galley.core.engine import StageContext, stage
from galley.core.errors import ConfigError, ValidationError
from galley.core.runs.layout import RunPaths
from galley.core.runs.sessions import run_session_config
from galley.core.sections import EvalSection, ModelSection, PreferenceSection
from galley.core.serialization import from_data, to_data

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@attrs.frozen
class ReferenceLogprobs:
    """The reference's summed answer log-probabilities for the train and eval pairs, with
    what they were computed from: the reference (``model``) and the rendered pairs
    (``fingerprint``, a hash of every token and weight)."""

    model: str
    fingerprint: str
    train: AnswerLogprobs
    eval: AnswerLogprobs


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def reference_document(reference: ReferenceLogprobs) -> bytes:
    """The saved form: the log-probabilities and the SHA-256 of their canonical JSON, so an
    edit is found on load as a checkpoint's is."""
    payload = to_data(reference)
    return json.dumps({"sha256": _digest(payload), "reference": payload}).encode()


def read_reference(data: bytes, key: str) -> ReferenceLogprobs:
    """Saved reference log-probabilities, refused when they are not as written."""
    try:
        document = json.loads(data)
        payload, digest = document["reference"], document["sha256"]
    except (ValueError, TypeError, KeyError):
        raise ValidationError(
            key, "not a reference log-probabilities file of galley (no sha256 and reference)"
        ) from None
    if _digest(payload) != digest:
        raise ValidationError(
            key,
            "the saved reference log-probabilities do not match their SHA-256: they were "
            "changed after they were written; refusing to train against them",
        )
    return from_data(ReferenceLogprobs, payload)


def pairs_fingerprint(*splits: Sequence[RenderedPair]) -> str:
    digest = hashlib.sha256()
    for split in splits:
        digest.update(b"split")
        for pair in split:
            for datum in pair.datums:
                digest.update(datum.model_input.token_array.tobytes())
                for key in ("target_tokens", "weights"):
                    digest.update(datum.loss_fn_inputs[key].data.tobytes())
    return digest.hexdigest()


def answer_logprobs_of(
    ctx: StageContext, session: TrainingSession, pairs: Sequence[RenderedPair], batch_size: int
) -> AnswerLogprobs:
    """Both answers of every pair scored by ``session``'s weights (``forward``, batches of
    ``batch_size`` sequences, every batch submitted before any wait)."""
    data = pair_datums(pairs)
    futures = [
        session.forward(data[i : i + batch_size], "cross_entropy")
        for i in range(0, len(data), batch_size)
    ]
    logprobs = [lp for f in futures for lp in ctx.wait(f, "training.forward").logprobs]
    return summed_answers(pairs, logprobs)


@attrs.frozen
class ReferenceScorer:
    """What scores the pairs, once, before any step: the weights the run starts from (the
    run's own session, before it trains) or ``reference_model`` on a session of its own
    (``session``); how it is described in the saved file (``model``), where that file is
    (``key``), and the batch size it scores in."""

    model: str
    key: str
    batch_size: int
    session: SessionConfig | None = None  # None: the run's own session

    def open(self, ctx: StageContext, policy: TrainingSession) -> TrainingSession:
        """The session that scores: the run's own, or the reference model's, refused when it
        tokenizes otherwise than the trained model."""
        if self.session is None:
            return policy
        scorer = ctx.adapters.training.start_session(self.session)
        mismatch = tokenizer_mismatch(policy.tokenizer, scorer.tokenizer, "the trained model's")
        if mismatch is not None:
            scorer.close()
            raise ConfigError(
                f"reference_model {self.model!r} tokenizes otherwise than the trained model "
                f"{policy.model_info.name!r}: {mismatch}; it cannot score the same tokens"
            )
        return scorer


@attrs.frozen
class Reference:
    """What each step's preference loss compares against: the reference's log-probabilities
    of every pair, and the objective that compares them (loss type, β, label smoothing)."""

    logprobs: ReferenceLogprobs
    objective: PreferenceObjective


@stage(
    writes=("reference_scorer",),
)
def plan_reference(
    ctx: StageContext,
    preference: PreferenceSection,
    model: ModelSection,
    evaluation: EvalSection,
    seed: int,
    paths: RunPaths,
) -> dict[str, Any]:
    """Which weights score the pairs: the run's starting weights (its base model, or
    ``init_from``), or ``preference.reference_model`` on a session of its own."""
    key, batch_size = paths.reference, evaluation.eval_batch_size
    if preference.reference_model:
        scoring = attrs.evolve(model, base_model=preference.reference_model)
        config = run_session_config(scoring, seed, paths, "reference")
        scorer = ReferenceScorer(preference.reference_model, key, batch_size, config)
    else:
        start = f"{model.base_model} from {model.init_from}" if model.init_from else None
        scorer = ReferenceScorer(start or model.base_model, key, batch_size)
    return {"reference_scorer": scorer}


@stage(
    writes=("reference",),
    ports=("training", "blobs"),
)
def reference_logprobs(
    ctx: StageContext,
    session: TrainingSession,
    train_data: Sequence[RenderedPair],
    eval_data: Sequence[RenderedPair],
    start_step: int,
    reference_scorer: ReferenceScorer,
    preference: PreferenceSection,
) -> dict[str, Any]:
    """Score every pair with the reference once. A run that already saved the scores reads
    them back, after checking they were computed by the same reference from the same
    rendered pairs; a resumed run that lost them is refused (its weights have moved)."""
    blobs, key, described = ctx.adapters.blobs, reference_scorer.key, reference_scorer.model
    objective = preference.objective
    fingerprint = pairs_fingerprint(train_data, eval_data)
    if blobs.exists(key):
        saved = read_reference(blobs.read(key), key)
        if saved.model != described or saved.fingerprint != fingerprint:
            differs = "reference model" if saved.model != described else "rendered pairs"
            raise ValidationError(
                key,
                f"these reference log-probabilities were computed for other {differs} "
                f"(saved: {saved.model!r}, pairs {saved.fingerprint[:12]}; this run: "
                f"{described!r}, pairs {fingerprint[:12]}); refusing to train against them",
            )
        ctx.log.info("reference.loaded", key=key, pairs=len(saved.train))
        return {"reference": Reference(saved, objective)}
    if start_step > 0:
        raise ConfigError(
            f"the run resumes at step {start_step} but {key} is missing: its reference "
            "log-probabilities cannot be recomputed from weights that have been trained"
        )
    started = time.perf_counter()
    scorer, batch_size = reference_scorer.open(ctx, session), reference_scorer.batch_size
    try:
        logprobs = ReferenceLogprobs(
            described,
            fingerprint,
            answer_logprobs_of(ctx, scorer, train_data, batch_size),
            answer_logprobs_of(ctx, scorer, eval_data, batch_size),
        )
    finally:
        if scorer is not session:
            scorer.close()
    blobs.write(key, reference_document(logprobs))
    ctx.log.info(
        "reference.computed",
        key=key,
        model=described,
        pairs=len(logprobs.train) + len(logprobs.eval),
        seconds=round(time.perf_counter() - started, 2),
    )
    return {"reference": Reference(logprobs, objective)}
