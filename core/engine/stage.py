"""Stages, loops and workflows: the shape of a run, declared before it runs.

A stage names the state keys it reads (its parameters) and writes (and the ports it uses). It
receives exactly the keys it reads, as keyword arguments, and returns a dict of exactly the
keys it writes, so every data dependency is visible in the declaration and checked before
anything runs. A key has one writer: a later stage may write it again only to update it (it
reads it too, as a training step threads the pipeline) or when it declares that it
``replaces`` it (distillation's teacher replaces RL's advantages).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from galley.core.checks import str_frozenset

if TYPE_CHECKING:
    from galley.core.engine.runner import StageContext

StageFn = Callable[..., Mapping[str, Any]]


@runtime_checkable
class Stage(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def reads(self) -> frozenset[str]: ...

    @property
    def writes(self) -> frozenset[str]: ...

    @property
    def ports(self) -> frozenset[str]: ...

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Do the work; return a value for every key in ``writes`` and nothing else.

        A stage that raises a transient error is run again from the start, so it must not have
        changed anything outside its return value before the failing call."""
        ...


@attrs.frozen
class FunctionStage:
    """A stage made from a function ``fn(ctx, **reads) -> {write: value}``."""

    name: str
    fn: StageFn = attrs.field(repr=False)
    reads: frozenset[str] = attrs.field(converter=str_frozenset, factory=frozenset)
    writes: frozenset[str] = attrs.field(converter=str_frozenset, factory=frozenset)
    ports: frozenset[str] = attrs.field(converter=str_frozenset, factory=frozenset)
    doc: str = ""
    # Keys an earlier stage wrote that this one writes anew, without reading them.
    replaces: frozenset[str] = attrs.field(converter=str_frozenset, factory=frozenset)

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.fn(ctx, **inputs)


def first_sentence(docstring: str) -> str:
    """A docstring's first sentence, whole, on one line: what a listing of stages shows."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def stage(
    *,
    writes: Iterable[str] = (),
    ports: Iterable[str] = (),
    reads: Iterable[str] | None = None,
    replaces: Iterable[str] = (),
) -> Callable[[StageFn], FunctionStage]:
    """Decorator: ``@stage(writes=("pipeline",), ports=("training",))`` on
    ``fn(ctx, session, pipeline)``. What a stage reads is declared once, by its parameters
    after ``ctx``; ``reads`` is for a function that takes ``**kwargs`` and only for it.
    ``replaces``: keys of its writes that an earlier stage wrote and this one overrides."""

    def wrap(fn: StageFn) -> FunctionStage:
        doc = first_sentence(fn.__doc__ or "")
        return FunctionStage(
            fn.__name__, fn, reads_of(fn, reads), writes, ports, doc, frozenset(replaces)
        )

    return wrap


def reads_of(fn: StageFn, declared: Iterable[str] | None = None) -> frozenset[str]:
    """The state keys ``fn(ctx, ...)`` reads: its parameters after ``ctx``, and, for one
    that takes ``**kwargs``, the keys ``declared`` for them."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # after ctx
    named = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    takes_more = any(p.kind == p.VAR_KEYWORD for p in params)
    if declared is None:
        if takes_more:
            raise TypeError(f"stage {fn.__name__!r} takes **kwargs: declare what it reads")
        return named
    if not takes_more:
        raise TypeError(
            f"stage {fn.__name__!r}: its parameters say what it reads; drop reads= "
            "(it is for a function that takes **kwargs)"
        )
    return named | frozenset(declared)


@attrs.frozen
class Every:
    """Runs ``stage`` when ``state[key] % n == 0`` (never when ``n == 0``). Its writes are not
    guaranteed, so later stages may not rely on them."""

    stage: Stage
    n: int
    key: str = "step"

    @property
    def name(self) -> str:
        return self.stage.name

    def should_run(self, state: Mapping[str, Any]) -> bool:
        return self.n > 0 and state[self.key] % self.n == 0


def _steps(value: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(value)


@attrs.frozen
class Loop:
    """Runs ``body`` once for each ``counter`` in ``state[start] + 1 .. state[stop]``: the
    1-based number of the iteration being run, with ``start`` iterations already done (so a
    resumed run starts where it stopped)."""

    name: str
    body: tuple[Step, ...] = attrs.field(converter=_steps)
    start: str = "start_step"
    stop: str = "total_steps"
    counter: str = "step"


Step = Stage | Every | Loop


@attrs.frozen
class Workflow:
    name: str
    steps: tuple[Step, ...] = attrs.field(converter=_steps)
    description: str = ""

    def stages(self) -> list[Stage]:
        """Every stage, in order, loops flattened."""
        return list(_flatten(self.steps))

    @property
    def ports(self) -> frozenset[str]:
        return frozenset(p for s in self.stages() for p in s.ports)


def _flatten(steps: Iterable[Step]) -> Iterable[Stage]:
    for step in steps:
        if isinstance(step, Loop):
            yield from _flatten(step.body)
        elif isinstance(step, Every):
            yield step.stage
        else:
            yield step
