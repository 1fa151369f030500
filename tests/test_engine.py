"""The stage engine: data-flow checks before running, retries, clean stops, events, metrics."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from galley.core import Adapters, DataFlowError, TransientError, WorkflowError
from galley.core.engine import (
    Every,
    Loop,
    RetryPolicy,
    Runner,
    StageContext,
    Workflow,
    check_data_flow,
    stage,
)


@stage(writes=("y",))
def double(ctx: StageContext, x: int) -> dict[str, Any]:
    return {"y": 2 * x}


@stage(writes=("z",))
def inc(ctx: StageContext, y: int) -> dict[str, Any]:
    return {"z": y + 1}


def run(
    workflow: Workflow, adapters: Adapters, initial: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    return Runner(adapters, run_id="r", retry=RetryPolicy(initial_backoff_s=0), **kw).run(
        workflow, initial
    )


def test_stages_see_only_what_they_read(adapters: Adapters) -> None:
    assert run(Workflow("w", [double, inc]), adapters, {"x": 3}) == {"x": 3, "y": 6, "z": 7}


def test_reading_an_unwritten_key_fails_before_anything_runs(adapters: Adapters) -> None:
    ran = []

    @stage(writes=("a",))
    def first(ctx: StageContext) -> dict[str, Any]:
        ran.append(1)
        return {"a": 1}

    with pytest.raises(
        DataFlowError,
        match="stage 'inc' reads 'y' before it is written; it is written later by 'double'",
    ):
        run(Workflow("w", [first, inc, double]), adapters, {"x": 1})
    with pytest.raises(
        DataFlowError,
        match="stage 'double' reads 'x'.*no stage writes it and the config does not provide it",
    ):
        check_data_flow(Workflow("w", [double]), provided=[])
    assert ran == []


def test_loop_and_conditional_writes_are_not_guaranteed_afterwards() -> None:
    loop = Workflow("w", [Loop("l", [double], start="s", stop="n"), inc])
    with pytest.raises(DataFlowError, match="'inc' reads 'y'"):
        check_data_flow(loop, ["x", "s", "n"])
    every = Workflow("w", [Every(double, 2, key="x"), inc])
    with pytest.raises(DataFlowError, match="'inc' reads 'y'"):
        check_data_flow(every, ["x"])
    check_data_flow(Workflow("w", [Loop("l", [double, inc], start="s", stop="n")]), ["x", "s", "n"])


def test_a_key_written_twice_is_refused_unless_updated_or_declared_replaced(
    adapters: Adapters,
) -> None:
    @stage(writes=("y",))
    def overwrite(ctx: StageContext, x: int) -> dict[str, Any]:
        return {"y": -x}

    @stage(writes=("y",))
    def update(ctx: StageContext, y: int) -> dict[str, Any]:
        return {"y": y + 1}

    @stage(writes=("y",), replaces=("y",))
    def replace(ctx: StageContext, x: int) -> dict[str, Any]:
        return {"y": 10 * x}

    with pytest.raises(
        DataFlowError, match="stage 'overwrite' writes 'y', which stage 'double' already wrote"
    ):
        run(Workflow("w", [double, overwrite]), adapters, {"x": 1})
    with pytest.raises(DataFlowError, match="'double' writes 'y', which the config already wrote"):
        check_data_flow(Workflow("w", [double]), ["x", "y"])
    with pytest.raises(DataFlowError, match="'overwrite' writes 'y'"):  # in a loop too
        check_data_flow(
            Workflow("w", [double, Loop("l", [overwrite])]), ["x", "start_step", "total_steps"]
        )
    assert run(Workflow("w", [double, update]), adapters, {"x": 1})["y"] == 3
    assert run(Workflow("w", [double, replace]), adapters, {"x": 1})["y"] == 10


def test_a_stage_must_write_exactly_what_it_declares(adapters: Adapters) -> None:
    @stage(writes=("y",))
    def sloppy(ctx: StageContext, x: int) -> dict[str, Any]:
        return {"y": 1, "extra": 2}

    with pytest.raises(DataFlowError, match=r"undeclared: \['extra'\]"):
        run(Workflow("w", [sloppy]), adapters, {"x": 1})


def test_loops_count_from_start_and_every_fires_on_multiples(adapters: Adapters) -> None:
    seen: list[tuple[str, int]] = []

    @stage(writes=())
    def body(ctx: StageContext, step: int) -> dict[str, Any]:
        seen.append(("body", step))
        return {}

    @stage(writes=())
    def every3(ctx: StageContext, step: int) -> dict[str, Any]:
        seen.append(("every3", step))
        return {}

    workflow = Workflow("w", [Loop("train", [body, Every(every3, 3), Every(every3, 0)])])
    run(workflow, adapters, {"start_step": 2, "total_steps": 7})
    assert seen == [
        ("body", 3),
        ("every3", 3),
        ("body", 4),
        ("body", 5),
        ("body", 6),
        ("every3", 6),
        ("body", 7),
    ]


def test_transient_errors_are_retried_with_backoff(adapters: Adapters) -> None:
    calls = []

    @stage(writes=("y",))
    def flaky(ctx: StageContext, x: int) -> dict[str, Any]:
        calls.append(x)
        if len(calls) < 3:
            raise TransientError("connection reset")
        return {"y": x}

    with capture_logs() as logs:
        assert run(Workflow("w", [flaky]), adapters, {"x": 5})["y"] == 5
    assert len(calls) == 3
    retries = [e for e in logs if e["event"] == "retry"]
    assert [(e["what"], e["attempt"]) for e in retries] == [("flaky", 1), ("flaky", 2)]


def test_retries_are_bounded_and_then_stop_cleanly(adapters: Adapters) -> None:
    @stage(writes=("z",))
    def always_down(ctx: StageContext, y: int) -> dict[str, Any]:
        raise TransientError("still down")

    with pytest.raises(
        WorkflowError, match="stage 'always_down' failed: TransientError: still down"
    ) as info:
        run(Workflow("w", [double, always_down]), adapters, {"x": 2})
    assert info.value.stage == "always_down"
    assert info.value.state == {"x": 2, "y": 4}  # the state so far, intact


def test_other_errors_stop_at_once_naming_stage_and_step(adapters: Adapters) -> None:
    calls = []

    @stage(writes=())
    def broken(ctx: StageContext, step: int) -> dict[str, Any]:
        calls.append(step)
        if step == 2:
            raise ValueError("bad batch")
        return {}

    with pytest.raises(WorkflowError, match="at step 2: ValueError: bad batch") as info:
        run(Workflow("w", [Loop("l", [broken])]), adapters, {"start_step": 0, "total_steps": 5})
    assert calls == [1, 2]
    assert info.value.step == 2 and info.value.state["step"] == 2


def test_events_and_metrics(adapters: Adapters) -> None:
    @stage(writes=())
    def measure(ctx: StageContext, step: int) -> dict[str, Any]:
        ctx.record_metrics("train", step, {"loss": 1.0 / step})
        return {}

    with capture_logs() as logs:
        run(
            Workflow("w", [double, Loop("train", [measure])]),
            adapters,
            {"x": 1, "start_step": 0, "total_steps": 3},
        )
    events = [e["event"] for e in logs]
    assert events[:3] == ["workflow.start", "stage.start", "stage.end"]
    assert events.count("train.metrics") == 3 and events.count("step.end") == 3
    assert events[-1] == "workflow.end"
    rows = adapters.metrics.read("r")
    assert [(r.step, r.metrics["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]


def test_metrics_of_a_failed_attempt_are_not_recorded(adapters: Adapters) -> None:
    attempts = []

    @stage(writes=())
    def measure_then_fail_once(ctx: StageContext, x: int) -> dict[str, Any]:
        ctx.record_metrics("train", 1, {"loss": 2.0})
        attempts.append(1)
        if len(attempts) == 1:
            raise TransientError("blip after recording")
        return {}

    run(Workflow("w", [measure_then_fail_once]), adapters, {"x": 0})
    assert len(attempts) == 2
    assert [(r.step, dict(r.metrics)) for r in adapters.metrics.read("r")] == [(1, {"loss": 2.0})]


def test_a_stage_reads_what_its_parameters_name_declared_once() -> None:
    @stage(writes=("y",))
    def plain(ctx: StageContext, x: int, *, scale: int) -> dict[str, Any]:
        return {"y": x * scale}

    assert plain.reads == {"x", "scale"}
    with pytest.raises(TypeError, match="drop reads="):

        @stage(reads=("x",), writes=("y",))
        def twice(ctx: StageContext, x: int) -> dict[str, Any]:
            return {"y": x}

    with pytest.raises(TypeError, match="declare what it reads"):

        @stage(writes=("y",))
        def undeclared(ctx: StageContext, **inputs: int) -> dict[str, Any]:
            return {"y": 0}

    @stage(reads=("step",), writes=("y",))
    def keyed(ctx: StageContext, x: int, **position: int) -> dict[str, Any]:
        return {"y": x + position["step"]}

    assert keyed.reads == {"x", "step"}
