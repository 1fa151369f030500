"""Port calls as events (start, end with duration, error; a future's end when it is done),
as structlog events by config, and `galley run --trace` as a Chrome/Perfetto trace of every
stage and port call."""

from __future__ import annotations

import itertools
import json
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import structlog

from galley.adapters.cli import main
from galley.adapters.composition import build_adapters, parse_adapters_table
from galley.adapters.wrappers.events import with_events
from galley.workflows import WORKFLOWS
from galley.workflows.sft import SFTConfig
from galley.workflows.sft import run as run_sft


class Backend:
    def __init__(self) -> None:
        self.pending: Future[int] = Future()

    def now(self) -> int:
        return 1

    def later(self) -> Future[int]:
        return self.pending

    def broken(self) -> None:
        raise ValueError("no")


def test_calls_emit_start_and_end_and_a_futures_end_waits_for_it() -> None:
    seen: list[tuple[str, str, int, str, Any]] = []
    backend = Backend()
    observed = with_events(backend, "p", lambda *e: seen.append((e[0], e[1], e[2], e[3], e[5])))
    assert observed.now() == 1
    future = observed.later()
    assert [s[3] for s in seen] == ["start", "end", "start"]  # submitted, not done
    backend.pending.set_result(2)
    assert future.result() == 2 and seen[-1][3] == "end" and seen[-1][2] == seen[-2][2]
    with pytest.raises(ValueError, match="no"):
        observed.broken()
    assert seen[-1][3] == "error" and isinstance(seen[-1][4], ValueError)
    assert {s[:2] for s in seen} == {("p", "now"), ("p", "later"), ("p", "broken")}


def test_events_true_logs_every_call_of_that_port_with_its_duration() -> None:
    table = {"default": "noop", "training": {"kind": "noop", "events": True}}
    adapters = build_adapters(parse_adapters_table(table))
    with structlog.testing.capture_logs() as logs:
        run_sft(SFTConfig(max_steps=3, run_id="ev", num_samples=0, eval_every=0), adapters)
    ends = [e for e in logs if e["event"] == "port.call.end"]
    methods = [e["method"] for e in ends]
    assert methods.count("forward_backward") == 3 and methods.count("optim_step") == 3
    assert all(e["port"] == "training" and e["duration_s"] >= 0 for e in ends)


def test_the_trace_holds_every_stage_and_port_call_with_sane_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    trace = tmp_path / "trace.json"
    args = ["--adapters", "noop", "--set", "max_steps=4", "--set", "eval_every=2"]
    assert main(["run", "sft", *args, "--trace", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    for event in events:
        assert {"name", "ph", "pid", "tid"} <= set(event)
        assert event["ph"] == "M" or event["ts"] >= 0
    stages = [e for e in events if e["ph"] == "X"]
    workflow = WORKFLOWS["sft"].build(SFTConfig(max_steps=4, eval_every=2))
    ran = {e["name"] for e in stages}
    assert {s.name for s in workflow.stages()} - {"checkpoint"} <= ran  # no checkpoint_every
    assert [e["args"]["step"] for e in stages if e["name"] == "forward_backward"] == [1, 2, 3, 4]
    for a, b in itertools.pairwise(stages):  # one at a time, in order
        assert a["dur"] >= 0 and a["ts"] + a["dur"] <= b["ts"] + 1.0
    begins = {e["id"]: e for e in events if e["ph"] == "b"}
    ends = {e["id"]: e for e in events if e["ph"] == "e"}
    assert begins.keys() == ends.keys() and len(begins) > 20
    assert all(ends[i]["ts"] >= b["ts"] and ends[i]["name"] == b["name"] for i, b in begins.items())
    calls = {b["name"] for b in begins.values()}
    assert {"training.forward_backward", "training.optim_step", "blobs.write"} <= calls
    # Each forward_backward stage submitted its training call while it ran.
    submitted = sorted(b["ts"] for b in begins.values() if b["name"] == "training.forward_backward")
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in stages if e["name"] == "forward_backward"]
    assert len(submitted) == len(spans) == 4
    assert all(start <= t <= end for t, (start, end) in zip(submitted, spans, strict=True))
