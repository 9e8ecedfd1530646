"""``Saga``: a saga's declaration, its subscriptions, and the operator's view of its instances.

::

    saga = Saga("order", OrderState, key="order_id", store=SqlSagaStore(engine, outbox=outbox))

    @saga.starts(OrderCreated)
    def created(event: OrderCreated, step: SagaStep[OrderState]) -> None:
        step.state = OrderState(order_id=event.order_id, amount=event.amount)
        step.publish(ReserveStock(order_id=event.order_id))
        step.goto("reserving")

    @saga.on(StockReserved, when="reserving")
    def reserved(event: StockReserved, step: SagaStep[OrderState]) -> None:
        step.compensate_with("release_stock")
        ...

    bus.include_router(saga.router())

Each event type the saga handles gets one subscription, in the consumer group
``saga.<name>.<event type>``, keyed by the event's partition key (publish them with the
instance's key, and one instance's events are handled in order).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from eventbus.context import Context
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.router import Router
from eventbus.sagas.definition import SagaDefinition
from eventbus.sagas.engine import Engine
from eventbus.sagas.records import STATUSES, SagaNotFound, SagaRecord, Timer, Transition

__all__ = ["Saga", "SagaInstance"]

S = TypeVar("S", bound=BaseModel)


@dataclasses.dataclass(frozen=True)
class SagaInstance(Generic[S]):
    """What an operator sees of one instance."""

    saga: str
    key: str
    status: str
    phase: str
    state: S
    version: int
    compensations: tuple[str, ...]
    """Compensations still to run, the next last."""
    attempts: int
    """Failed attempts of the next compensation."""
    last_error: str | None
    history: tuple[Transition, ...]
    timers: tuple[Timer, ...]
    created_at: float
    updated_at: float


class Saga(SagaDefinition[S]):
    """A long-running process with typed state, driven by events; see the module docs.

    ``name`` names it (a type-name-like word: ``order``, ``billing.refund``); ``state`` is
    its pydantic model; ``key`` finds an event's instance (a field name, or a function of the
    event; a handler may give its own). ``store`` keeps the instances (``MemorySagaStore`` or
    ``SqlSagaStore``), ``clock`` says when timers are due (wall-clock by default).
    ``on_missing`` says what an event for an instance that does not exist does: ``"ignore"``
    (logged, acked) or ``"dead_letter"`` (``SagaNotFound``, to the dead-letter queue); it never
    creates one. A failed compensation is tried again after each of ``compensation_retries``
    seconds, then the instance stops in ``compensation_failed``. ``upcasters`` turn stored
    state of an older ``state_version`` into the current one (registered under the type name
    ``saga.<name>``).
    """

    @functools.cached_property
    def engine(self) -> Engine:
        """Applies the declaration to the stored instances."""
        return Engine(self)

    def router(self) -> Router:
        """The saga's subscriptions, one per event type it handles, for ``include_router``."""
        if self.store is None:
            raise ConfigurationError(
                f"saga {self.name!r} has no store yet: give it one (Saga(..., store=...) or "
                "saga.store = ...) before router(), whose subscriptions run in its transactions"
            )
        router = Router()
        middleware = tuple(self.store.middleware())
        for model in self.event_types:
            router.subscribe(
                model,
                group=f"saga.{self.name}.{model.event_type}",
                concurrency=self.concurrency,
                middleware=middleware,
            )(self._handler(model))
        return router

    def _handler(self, model: type[Event]) -> Any:
        engine = self.engine

        async def handle(event: Event, ctx: Context) -> None:
            await engine.on_event(event, ctx)

        handle.__name__ = f"saga_{self.name.replace('.', '_')}"
        handle.__qualname__ = f"Saga[{self.name}].on[{model.__name__}]"  # its log name
        return handle

    # ---------------------------------------------------------------- the operator's view
    async def list(self, status: str | None = None, *, limit: int = 100) -> list[SagaInstance[S]]:
        """Instances (oldest first), all or those in ``status`` (see ``STATUSES``)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status is one of {', '.join(STATUSES)}, not {status!r}")
        records = await self.engine.store.instances(self.name, status, limit)
        return [await self._instance(r, with_timers=False) for r in records]

    async def show(self, key: str) -> SagaInstance[S]:
        """One instance: its state, its history of transitions and its pending timers."""
        store = self.engine.store
        async with store.transaction() as session:
            record = await store.load(session, self.name, key)
        if record is None:
            raise SagaNotFound(self.name, key)
        return await self._instance(record, with_timers=True)

    async def resume(self, key: str) -> SagaInstance[S]:
        """Run again the compensations of an instance stuck in ``compensation_failed``, with
        a fresh retry budget (a :class:`SagaWorker` runs them); fix their cause first."""
        record = await self.engine.resume(key)
        return await self._instance(record, with_timers=True)

    async def _instance(self, record: SagaRecord, *, with_timers: bool) -> SagaInstance[S]:
        timers = await self.engine.store.timers(self.name, record.key) if with_timers else []
        state: Any = self.engine.state_of(record)
        return SagaInstance(
            record.saga, record.key, record.status, record.phase, state, record.version,
            record.compensations, record.attempts, record.last_error, record.history,
            tuple(timers), record.created_at, record.updated_at,
        )  # fmt: skip
