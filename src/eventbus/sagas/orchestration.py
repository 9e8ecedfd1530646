"""The orchestrated form: an ordered list of steps, each with its compensation, on a ``Saga``.

::

    order = orchestration(
        "order", OrderState, starts=OrderCreated, key="order_id", init=state_of_order,
        steps=[
            Step("reserve_stock", run=reserve, done=StockReserved,
                 failed=StockReservationFailed, compensate=release),
            Step("charge_payment", run=charge, done=PaymentProcessed, failed=PaymentFailed,
                 compensate=refund, timeout=30),
            Step("schedule_shipment", run=ship, done=ShipmentScheduled, timeout=60),
        ],
        on_compensated=cancel_order,
    )

A step is entered by running ``run(step)`` (which publishes the command), and completes when
its ``done`` event arrives (at once when it has none); then the next step is entered, and after
the last the saga completes. It fails when one of its ``failed`` events arrives, when ``run``
raises a ``PermanentError``, or when its ``timeout`` fires first. A failed saga runs the
compensations of the completed steps, last first — and, after a timeout, first the timed-out
step's own, since what it asked for may have happened after all — then ``on_compensated``.
It is compiled into a plain :class:`~eventbus.sagas.Saga` (phases named after the steps), so
it is stored, retried, timed and operated exactly like one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from eventbus.errors import ConfigurationError, PermanentError
from eventbus.event import Event
from eventbus.sagas.engine import call
from eventbus.sagas.saga import Saga
from eventbus.sagas.step import SagaStep

__all__ = ["Step", "orchestration"]

S = TypeVar("S", bound=BaseModel)
StepFunction = Callable[[SagaStep[Any]], Any]


@dataclasses.dataclass(frozen=True)
class Step(Generic[S]):
    """One step: ``run`` sends its command; ``done`` completes it, a ``failed`` event fails
    it; ``compensate`` undoes it; ``timeout`` seconds without ``done`` fail it;
    ``on_done(event, step)`` records what the ``done`` event says in the state."""

    name: str
    run: StepFunction
    done: type[Event] | None = None
    failed: Sequence[type[Event]] | type[Event] = ()
    compensate: StepFunction | None = None
    timeout: float | None = None
    on_done: Callable[[Any, SagaStep[Any]], Any] | None = None

    @property
    def failures(self) -> tuple[type[Event], ...]:
        return (self.failed,) if isinstance(self.failed, type) else tuple(self.failed)


def orchestration(
    name: str,
    state: type[S],
    *,
    starts: type[Event],
    key: str | Callable[[Any], str],
    init: Callable[[Any], S],
    steps: Sequence[Step[S]],
    on_completed: StepFunction | None = None,
    on_compensated: StepFunction | None = None,
    **options: Any,
) -> Saga[S]:
    """A :class:`Saga` that runs ``steps`` in order for each ``starts`` event; ``init(event)``
    is the first state. ``options`` go to ``Saga`` (``store``, ``clock``, ``on_missing``…)."""
    names = [s.name for s in steps]
    if not steps or len(set(names)) != len(names):
        raise ConfigurationError(f"orchestration {name!r} needs steps with distinct names")
    saga: Saga[S] = Saga(name, state, key=key, **options)
    flow = _Flow(list(steps), on_completed)

    @saga.starts(starts)
    async def start(event: Event, step: SagaStep[S]) -> None:
        step.state = init(event)
        await flow.enter(0, step)

    for index, declared in enumerate(steps):
        flow.declare(saga, index, declared)
    if on_compensated is not None:
        saga.on_compensated(on_compensated)
    return saga


class _Flow:
    def __init__(self, steps: list[Step[Any]], on_completed: StepFunction | None) -> None:
        self.steps, self.on_completed = steps, on_completed

    def declare(self, saga: Saga[Any], index: int, declared: Step[Any]) -> None:
        if declared.compensate is not None:
            saga.compensation(declared.name)(declared.compensate)
        if declared.done is not None:
            saga.on(declared.done, when=declared.name)(self._finisher(index))
        for failure in declared.failures:
            saga.on(failure, when=declared.name)(_failer(declared))
        if declared.timeout is not None:
            saga.on_timeout(declared.name)(_timed_out(declared))

    def _finisher(self, index: int) -> Callable[[Event, SagaStep[Any]], Any]:
        async def finish(event: Event, step: SagaStep[Any]) -> None:
            await self.finish(index, event, step)

        return finish

    async def enter(self, index: int, step: SagaStep[Any]) -> None:
        """Run step ``index``'s command; a ``PermanentError`` from it fails the saga with
        nothing of the step kept."""
        declared = self.steps[index]
        step.goto(declared.name)
        mark, before = len(step.messages), step.state.model_copy(deep=True)
        try:
            await call(declared.run, step)
        except PermanentError as exc:
            del step.messages[mark:]
            step.state = before
            step.fail(f"step {declared.name} failed: {type(exc).__name__}: {exc}")
            return
        if declared.done is None:
            await self.finish(index, None, step)
        elif declared.timeout is not None:
            step.timeout(declared.name, declared.timeout)

    async def finish(self, index: int, event: Event | None, step: SagaStep[Any]) -> None:
        declared = self.steps[index]
        if declared.on_done is not None and event is not None:
            await call(declared.on_done, event, step)
        if declared.compensate is not None:
            step.compensate_with(declared.name)
        step.cancel_timeout(declared.name)
        if index + 1 < len(self.steps):
            await self.enter(index + 1, step)
            return
        if self.on_completed is not None:
            await call(self.on_completed, step)
        step.complete()


def _failer(declared: Step[Any]) -> Callable[[Event, SagaStep[Any]], None]:
    def failed(event: Event, step: SagaStep[Any]) -> None:
        reason = getattr(event, "reason", None)
        detail = f": {reason}" if reason else ""
        step.fail(f"step {declared.name} failed ({event.event_type}{detail})")

    return failed


def _timed_out(declared: Step[Any]) -> Callable[[SagaStep[Any]], None]:
    def timed_out(step: SagaStep[Any]) -> None:
        if declared.compensate is not None:  # what it asked for may have happened after all
            step.compensate_with(declared.name)
        step.fail(f"step {declared.name} timed out after {declared.timeout:g}s")

    return timed_out
