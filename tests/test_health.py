"""``bus.health()`` on the memory broker, and what it reports when a broker cannot answer.

The same checks against the real brokers are in ``tests/brokers/test_observability.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventbus import BrokerUnavailable, Event, EventBus, Router
from eventbus.brokers.memory import MemoryBroker
from eventbus.health import Health, SubscriptionHealth
from eventbus.testing import wait_until

pytestmark = pytest.mark.anyio


class Job(Event):
    n: int


def blocked(gate: asyncio.Event, handled: list[int]) -> Router:
    """A router whose one handler (group ``g``) waits for ``gate`` before it records."""
    router = Router()

    @router.subscribe(Job, group="g")
    async def handle(event: Job) -> None:
        await gate.wait()
        handled.append(event.n)

    return router


async def only(bus: EventBus) -> SubscriptionHealth:
    [sub] = (await bus.health()).subscriptions
    return sub


async def delivered(bus: EventBus) -> bool:
    return (await only(bus)).last_delivery_at is not None


async def test_health_follows_lag_and_deliveries() -> None:
    gate, handled = asyncio.Event(), list[int]()
    router = blocked(gate, handled)
    bus = EventBus("memory://", routers=[router])
    assert await bus.health() == Health(started=False, subscriptions=())
    async with bus:
        health = await bus.health()
        assert health.ready
        assert health.live
        assert health.subscriptions == (
            SubscriptionHealth(
                name=router.subscriptions[0].name,
                group="g",
                destination="Job",
                connected=True,
                running=True,
                last_delivery_at=None,
                lag=0,
            ),
        )
        published_at = time.time()
        for n in range(5):
            await bus.publish(Job(n=n))
        await wait_until(lambda: delivered(bus))
        waiting = await only(bus)
        assert waiting.lag == 5  # four queued, one delivered and not settled
        assert waiting.last_delivery_at is not None
        assert waiting.last_delivery_at >= published_at
        gate.set()
        await bus.drain()
        done = await only(bus)
        assert handled == [0, 1, 2, 3, 4]
        assert done.lag == 0
        assert done.last_delivery_at is not None
        assert done.last_delivery_at >= published_at
        assert dataclasses.asdict(await bus.health())["subscriptions"][0]["lag"] == 0
    stopped = await bus.health()
    assert stopped == Health(started=False, subscriptions=())
    assert not stopped.ready
    assert stopped.live


class Unreachable(MemoryBroker):
    """A memory broker whose lag query fails as a network broker's does when it is down."""

    async def lag(self, subscription: Any) -> int | None:
        raise BrokerUnavailable("the broker did not answer")


class Hanging(MemoryBroker):
    """A memory broker whose lag query never answers."""

    async def lag(self, subscription: Any) -> int | None:
        await asyncio.Event().wait()
        raise AssertionError("never answers")


class Broken(MemoryBroker):
    async def lag(self, subscription: Any) -> int | None:
        raise RuntimeError("a bug in the adapter")


@pytest.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


@pytest.mark.parametrize("broker_class", [Unreachable, Hanging, Broken])
async def test_a_broker_that_cannot_answer_is_reported_not_raised(
    broker_class: type[MemoryBroker], gate: asyncio.Event, caplog: pytest.LogCaptureFixture
) -> None:
    async with EventBus(broker_class(), routers=[blocked(gate, [])]) as bus:
        started = time.monotonic()
        health = await bus.health(timeout=0.2)
        assert time.monotonic() - started < 5
    [sub] = health.subscriptions
    assert (sub.connected, sub.running, sub.lag) == (False, True, None)
    assert health.started
    assert health.live
    assert not health.ready
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warned) == (broker_class is Broken)  # an adapter's bug is not kept quiet


class WithoutLag(MemoryBroker):
    """An adapter that cannot be asked for its lag (a third-party one, say)."""

    lag = None  # type: ignore[assignment]


async def test_an_adapter_without_lag_reports_connected_while_running(gate: asyncio.Event) -> None:
    async with EventBus(WithoutLag(), routers=[blocked(gate, [])]) as bus:
        sub = await only(bus)
    assert (sub.connected, sub.running, sub.lag) == (True, True, None)


class Fatal(BaseException):
    """Ends a fetch loop for good, as nothing an adapter raises normally does."""


class Dying(MemoryBroker):
    async def subscribe(self, subscription: Any) -> Any:
        return _DyingConsumer()


class _DyingConsumer:
    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        raise Fatal

    async def close(self) -> None:
        return None


async def stopped(bus: EventBus) -> bool:
    return not (await only(bus)).running


async def test_a_stopped_fetch_loop_makes_the_bus_not_live(gate: asyncio.Event) -> None:
    async with EventBus(Dying(), routers=[blocked(gate, [])]) as bus:
        await wait_until(lambda: stopped(bus))
        health = await bus.health()
    [sub] = health.subscriptions
    assert not sub.running
    assert not health.live
    assert not health.ready
