"""Sampling requests run on one thread, and those waiting together for the same sampler with
the same settings run as one batch: the SDK sends a batch of prompts as concurrent requests
of one prompt each, and a completer samples a batch far faster than its prompts one by one."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Hashable
from concurrent.futures import Future

import attrs

from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Completion, ModelRef, SamplingParams
from galley.ports.completer import Completer

GATHER_S = 0.02  # after the first request, how long to wait for the ones sent with it


@attrs.define(eq=False)
class SampleJob:
    completer: Completer
    model: ModelRef | None
    params: SamplingParams
    num_samples: int
    prompt: ModelInput
    result: Future[Completion] = attrs.field(factory=Future)

    @property
    def group(self) -> Hashable:
        return (id(self.completer), self.model, self.params, self.num_samples)


class SampleBatcher:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[SampleJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="galley-serve-sample", daemon=True)
        self._thread.start()

    def submit(self, job: SampleJob) -> Future[Completion]:
        self._jobs.put(job)
        return job.result

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (first := self._jobs.get()) is not None:
            time.sleep(GATHER_S)
            jobs, stop = [first], False
            while not self._jobs.empty():
                job = self._jobs.get()
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            groups: dict[Hashable, list[SampleJob]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                _sample(group)
            if stop:
                return


def _sample(group: list[SampleJob]) -> None:
    head = group[0]
    try:
        completions = head.completer.complete_batch(
            [j.prompt for j in group], head.params, model=head.model, num_samples=head.num_samples
        )
    except BaseException as e:  # each request of the batch fails with it; the thread goes on
        for job in group:
            job.result.set_exception(e)
        return
    for job, completion in zip(group, completions, strict=True):
        job.result.set_result(completion)
