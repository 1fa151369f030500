"""Which checkpoints a run keeps as it saves more: the newest N, the best N by a metric, or
both, and always the newest (what a resume loads)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def steps_to_drop(
    steps: Sequence[int],
    keep_newest: int,
    keep_best: int = 0,
    scores: Mapping[int, float] | None = None,
    maximize: bool = False,
) -> list[int]:
    """The saved ``steps`` (oldest first) to delete. ``keep_newest`` keeps the newest N (0:
    every step, unless ``keep_best`` is set); ``keep_best`` keeps the N best-scoring steps
    (``scores``: each evaluated step's metric; steps without one cannot be ranked and go).
    Of steps that score alike, the newer ranks first. A step either rule keeps stays, and so
    does the newest."""
    if not steps or (not keep_newest and not keep_best):
        return []
    kept = {steps[-1]}
    if keep_newest:
        kept |= set(steps[-keep_newest:])
    if keep_best:
        known = scores or {}
        sign = -1.0 if maximize else 1.0
        ranked = sorted((s for s in steps if s in known), key=lambda s: (sign * known[s], -s))
        kept |= set(ranked[:keep_best])
    return [s for s in steps if s not in kept]
