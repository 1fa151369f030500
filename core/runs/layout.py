"""Where a run keeps what it writes: one type owns every key of a run's folder.

``<output>/<run_id>/`` holds the run's record (``run.json``) and lock, its checkpoint index
and the checkpoints (``state/``, ``sampler/``: the training adapter writes those under
:attr:`RunPaths.folder`), its metric rows where a metrics store keeps them beside the run, the
rollouts an RL run recorded, a DPO run's reference log-probabilities and off-policy
distillation's teacher data. Nothing else builds a run's keys, so a reader finds the layout
here and a change to it is made once."""

from __future__ import annotations

import attrs

from galley.core.keys import join_key

RECORD_NAME = "run.json"
LOCK_NAME = "run.lock"
INDEX_NAME = "checkpoints.jsonl"
REFERENCE_NAME = "reference_logprobs.json"
ROLLOUTS_FOLDER = "rollouts"
TEACHER_DATA_FOLDER = "teacher_data"


@attrs.frozen
class RunPaths:
    """The blob keys of run ``run_id`` under ``output``."""

    output: str
    run_id: str

    def under(self, *parts: str) -> str:
        """A key in the run's folder (the folder itself, given no parts)."""
        return join_key(self.output, self.run_id, *parts)

    @property
    def folder(self) -> str:
        """The run's folder; training sessions save their checkpoints below it."""
        return self.under()

    @property
    def record(self) -> str:
        return self.under(RECORD_NAME)

    @property
    def lock(self) -> str:
        return self.under(LOCK_NAME)

    @property
    def index(self) -> str:
        """The checkpoint index: one line a good checkpoint, oldest first."""
        return self.under(INDEX_NAME)

    @property
    def reference(self) -> str:
        """A DPO run's reference log-probabilities."""
        return self.under(REFERENCE_NAME)

    @property
    def rollouts(self) -> str:
        """The folder of an RL run's recorded batches, one JSONL file a step."""
        return self.under(ROLLOUTS_FOLDER)

    def rollout_batch(self, step: int) -> str:
        return join_key(self.rollouts, f"step-{step:06d}.jsonl")

    @property
    def teacher_data(self) -> str:
        """Off-policy distillation's dataset: the teacher's answers as chat rows."""
        return self.under(TEACHER_DATA_FOLDER)

    @property
    def final_sampler(self) -> str:
        """The sampler weights the run exported when it finished."""
        return self.under("sampler", "final")
