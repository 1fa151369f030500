"""Named checkpoints on ``galley serve``: saving over one is asked for explicitly, never
done by a name reused. A name saved already, or being saved by a queued request, is refused;
a name is held from the request until its save is recorded (or fails)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from galley.adapters.serve.errors import ApiError, bad_request
from galley.adapters.serve.runs import RunStore, TinkerPath
from galley.core.domain.types import CheckpointRef


class SaveNames:
    def __init__(self, runs: RunStore) -> None:
        self.runs = runs
        self._saving: set[tuple[str, str]] = set()  # (tenant, tinker path) being saved
        self._lock = threading.Lock()

    def reserve(self, tenant: str, path: TinkerPath, overwrite: bool) -> None:
        taken = (tenant, str(path))
        with self._lock:
            if taken in self._saving:
                raise bad_request(f"{path} is being saved by an earlier request")
            try:
                self.runs.key_of(tenant, path)
            except ApiError:
                pass
            else:
                if not overwrite:
                    raise bad_request(f"{path} exists; save under another name (or overwrite)")
            self._saving.add(taken)

    def release(self, tenant: str, path: TinkerPath) -> None:
        with self._lock:
            self._saving.discard((tenant, str(path)))

    def record(
        self, tenant: str, path: TinkerPath, ref: CheckpointRef, user_metadata: Mapping[str, str]
    ) -> None:
        """Record the finished save in the run's record, and let the name go."""
        try:
            self.runs.record_saved(tenant, path, ref.key, user_metadata)
        finally:
            self.release(tenant, path)
