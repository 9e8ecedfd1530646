"""``SagaScenario``: drive sagas on the memory bus with a fake clock, step by step.

::

    async with SagaScenario(order_saga, routers=[services]) as scenario:
        await scenario.publish(OrderCreated(order_id="o-1", amount=30))
        assert scenario.types() == ["shop.reserve_stock", ...]
        await scenario.advance(30)  # the payment timeout fires
        assert (await scenario.instance(order_saga, "o-1")).status == "compensated"

For its duration the scenario gives each saga a fresh :class:`MemorySagaStore` and its
:class:`FakeClock` (it puts back the saga's own afterwards). Every call returns once nothing
is left to do *now*: the bus is drained and every due timer has fired (and what that caused
has been handled). Time moves only in :meth:`advance`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from eventbus.bus import EventBus
from eventbus.clock import FakeClock
from eventbus.envelope import Envelope
from eventbus.event import Event
from eventbus.router import Router
from eventbus.sagas import MemorySagaStore, Saga, SagaInstance, SagaWorker
from eventbus.testing import published

__all__ = ["SagaScenario"]

E = TypeVar("E", bound=Event)


class SagaScenario:
    """A started memory bus with ``sagas`` and ``routers`` (the services they talk to)."""

    def __init__(
        self,
        *sagas: Saga[Any],
        routers: Iterable[Router] = (),
        clock: FakeClock | None = None,
        service: str = "test",
    ) -> None:
        self.sagas: Sequence[Saga[Any]] = sagas
        self.clock = clock or FakeClock()
        self.store = MemorySagaStore()
        self._saved = [(s.store, s.clock) for s in sagas]
        for saga in sagas:
            saga.store, saga.clock = self.store, self.clock
        routers = [*routers, *(s.router() for s in sagas)]
        self.bus = EventBus("memory://", service=service, routers=routers, clock=self.clock)
        self.worker = SagaWorker(self.bus, sagas)

    async def __aenter__(self) -> SagaScenario:
        await self.bus.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.bus.stop()
        finally:
            for saga, (store, clock) in zip(self.sagas, self._saved, strict=True):
                saga.store, saga.clock = store, clock

    async def publish(self, event: Event, *, key: str | None = None) -> Envelope:
        """Publish ``event`` and settle (see :meth:`settle`)."""
        envelope = await self.bus.publish(event, key=key)
        await self.settle()
        return envelope

    async def publish_envelope(self, envelope: Envelope) -> None:
        """Deliver a ready envelope again (a duplicate delivery), and settle."""
        await self.bus.publish_envelope(envelope)
        await self.settle()

    async def settle(self) -> None:
        """Handle everything published and fire every timer due now, until nothing is left."""
        while True:
            await self.bus.drain(advance_clock=False)
            if not await self.worker.run_once():
                await self.bus.drain(advance_clock=False)
                if not await self.worker.run_once():
                    return

    async def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds`` (timers due by then fire, in order) and settle."""
        target = self.clock.now() + seconds
        while True:
            due = [
                t.due_at for s in self.sagas for t in await self._timers(s) if t.due_at <= target
            ]
            step = min(due, default=target)
            await self.clock.advance(max(0.0, step - self.clock.now()))
            await self.settle()
            if step >= target:
                return

    async def _timers(self, saga: Saga[Any]) -> list[Any]:
        return await self.store.due([saga.name], float("inf"), 10_000)

    def published(self, event_type: type[E]) -> list[E]:
        """The events of ``event_type`` published so far, oldest first, as models."""
        return [event_type.model_validate_json(e.data) for e in published(self.bus, event_type)]

    def types(self, *, prefix: str = "") -> list[str]:
        """The types of every event published so far (those starting with ``prefix``)."""
        return [e.type for e in published(self.bus) if e.type.startswith(prefix)]

    async def instance(self, saga: Saga[Any], key: str) -> SagaInstance[Any]:
        """The saga's instance ``key`` (see ``Saga.show``)."""
        return await saga.show(key)
