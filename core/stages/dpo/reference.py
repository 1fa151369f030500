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
from galley.core.domain.preferences import AnswerLogprobs, RenderedPair, pair_datums, summed_answers
from galley.core.engine import StageContext, stage
from galley.core.errors import ConfigError, ValidationError
from galley.core.runs.layout import RunPaths
from galley.core.runs.sessions import run_session_config
from galley.core.sections import EvalSection, ModelSection
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


def _describe(reference_model: str | None, base_model: str, init_from: str | None) -> str:
    if reference_model:
        return reference_model
    return f"{base_model} from {init_from}" if init_from else base_model


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
    evaluation: EvalSection,
    reference_model: str | None,
    model: ModelSection,
    seed: int,
    paths: RunPaths,
) -> dict[str, Any]:
    """Score every pair with the reference once: the run's starting weights (its base model,
    or ``init_from``), or ``reference_model``. A run that already saved them reads them back,
    after checking they were computed from the same reference and the same rendered pairs."""
    blobs, key, run_id = ctx.adapters.blobs, paths.reference, paths.run_id
    base_model, eval_batch_size = model.base_model, evaluation.eval_batch_size
    described = _describe(reference_model, base_model, model.init_from)
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
        return {"reference": saved}
    if start_step > 0:
        raise ConfigError(
            f"run {run_id} resumes at step {start_step} but {key} is missing: its reference "
            "log-probabilities cannot be recomputed from weights that have been trained"
        )
    started = time.perf_counter()
    scorer = session
    if reference_model:
        scoring_model = attrs.evolve(model, base_model=reference_model)
        config = run_session_config(scoring_model, seed, paths, "reference")
        scorer = ctx.adapters.training.start_session(config)
        mismatch = tokenizer_mismatch(session.tokenizer, scorer.tokenizer, "the trained model's")
        if mismatch is not None:
            scorer.close()
            raise ConfigError(
                f"reference_model {reference_model!r} tokenizes otherwise than the trained "
                f"model {base_model!r}: {mismatch}; it cannot score the same tokens"
            )
    try:
        reference = ReferenceLogprobs(
            described,
            fingerprint,
            answer_logprobs_of(ctx, scorer, train_data, eval_batch_size),
            answer_logprobs_of(ctx, scorer, eval_data, eval_batch_size),
        )
    finally:
        if scorer is not session:
            scorer.close()
    blobs.write(key, reference_document(reference))
    ctx.log.info(
        "reference.computed",
        key=key,
        model=described,
        pairs=len(reference.train) + len(reference.eval),
        seconds=round(time.perf_counter() - started, 2),
    )
    return {"reference": reference}
