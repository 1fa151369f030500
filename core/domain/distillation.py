"""On-policy distillation's arithmetic: the student samples, the teacher scores the student's
tokens, and each sampled token's advantage is how much likelier the teacher finds it than the
student did.

For a token ``x`` the student drew with log-probability ``s`` and the teacher gives ``t``,
``s - t`` is a one-sample estimate of the reverse KL, KL(student || teacher), at that
position; its negative ``t - s`` is the token's advantage (less the batch's mean of it, a
baseline). Trained with the importance-sampling loss, this pushes the student towards the
teacher where the student samples (the mode-seeking direction), with a signal at every token
instead of one reward per sequence.

A teacher must read and write the same token ids as the student: ``tokenizer_mismatch`` says
how two tokenizers differ, if they do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from galley.core.domain.tokenizer import Tokenizer

# Text that exercises a tokenizer's merges, cases, digits, punctuation and non-ASCII.
PROBE = "The quick brown fox, 1234 JUMPS over: the lazy dog!\n\tÉtoile → 東京 🙂 <|x|>"


def teacher_advantages(
    student: Sequence[Any], teacher: Sequence[Any]
) -> list[np.ndarray[Any, Any]]:
    """Per completion, per sampled token: teacher log-probability minus student's, less its
    mean over the batch's tokens. The mean is a baseline: subtracting a constant leaves the
    expected gradient as it was, but without it every token the student drew is pushed down
    (the student is less likely than the teacher nowhere on average) and learning stalls."""
    gaps = [
        np.asarray(t, np.float64) - np.asarray(s, np.float64)
        for s, t in zip(student, teacher, strict=True)
    ]
    flat = np.concatenate(gaps) if gaps else np.zeros(0)
    baseline = float(flat.mean()) if flat.size else 0.0
    return [gap - baseline for gap in gaps]


def reverse_kl(student: Sequence[Any], teacher: Sequence[Any]) -> float:
    """KL(student || teacher) per token, estimated on tokens the student sampled: the mean of
    student minus teacher log-probability (0 for no tokens)."""
    diffs = [
        np.asarray(s, np.float64) - np.asarray(t, np.float64)
        for s, t in zip(student, teacher, strict=True)
    ]
    flat = np.concatenate(diffs) if diffs else np.zeros(0)
    return float(flat.mean()) if flat.size else 0.0


def tokenizer_mismatch(
    student: Tokenizer, teacher: Tokenizer, trained: str = "the student's"
) -> str | None:
    """How the teacher's (or a reference's) tokenizer differs from the trained model's
    (vocabulary size, special ids, or the ids of a probe text), or None where they agree."""
    for what in ("vocab_size", "eos_token_id", "bos_token_id"):
        mine, theirs = getattr(student, what), getattr(teacher, what)
        if mine != theirs:
            return f"{what} {theirs} against {trained} {mine}"
    mine_ids, their_ids = student.encode(PROBE), teacher.encode(PROBE)
    if mine_ids != their_ids:
        return (
            f"a probe text encodes to {their_ids[:8]}... ({len(their_ids)} ids) against "
            f"{trained} {mine_ids[:8]}... ({len(mine_ids)})"
        )
    return None
