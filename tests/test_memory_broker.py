"""Memory broker specifics: attempts, delays on the fake clock, requeue on close, dead letters."""

from __future__ import annotations

import asyncio

import pytest

from eventbus import Context, Event, EventBus, PermanentError, RetryLater, Router
from eventbus.brokers.memory import MemoryBroker
from eventbus.clock import FakeClock
from eventbus.envelope import from_binary
from eventbus.testing import wait_until

pytestmark = pytest.mark.anyio


class Tick(Event):
    n: int


async def test_retry_later_waits_for_the_clock() -> None:
    clock, router, attempts = FakeClock(), Router(), []

    @router.subscribe(Tick)
    async def handle(event: Tick, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RetryLater(10)

    async with EventBus("memory://", routers=[router], middleware=(), clock=clock) as bus:
        await bus.publish(Tick(n=1))
        await wait_until(lambda: attempts == [1] and clock.sleepers == 1, timeout=5)
        await clock.advance(9.9)
        assert attempts == [1]
        await clock.advance(0.1)
        await wait_until(lambda: attempts == [1, 2] and clock.sleepers == 1, timeout=5)
        await clock.advance(10)
        await bus.drain()
    assert attempts == [1, 2, 3]


async def test_a_tight_publish_loop_lets_consumers_keep_up() -> None:
    router, handled, backlog = Router(), [], []

    @router.subscribe(Tick)
    async def handle(event: Tick) -> None:
        handled.append(event.n)

    async with EventBus("memory://", routers=[router]) as bus:
        for n in range(3000):
            await bus.publish(Tick(n=n))
            backlog.append((bus.broker.pending() or {})["queued"])
        await bus.drain()
    assert max(backlog) <= 300  # consumers ran during the loop: memory stays bounded
    assert handled == list(range(3000))


async def test_a_published_event_is_dead_lettered_with_its_wire_headers_and_bytes() -> None:
    router = Router()

    @router.subscribe(Tick)
    async def handle(event: Tick) -> None:
        raise PermanentError("cannot handle this one")

    async with EventBus("memory://", routers=[router]) as bus:
        sent = await bus.publish(Tick(n=7), key="k")
        await bus.drain()
        [record] = await bus.dead_letters.list()
    assert record.body == sent.data
    assert record.headers["ce_id"] == sent.id
    assert record.headers["ce_partitionkey"] == "k"
    assert from_binary(record.headers, record.body) == sent


async def test_drain_counts_delayed_redeliveries() -> None:
    clock, router = FakeClock(), Router()

    @router.subscribe(Tick)
    async def handle(event: Tick, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RetryLater(5)

    async with EventBus("memory://", routers=[router], middleware=(), clock=clock) as bus:
        await bus.publish(Tick(n=1))
        with pytest.raises(TimeoutError, match=r"'delayed': 1.*FakeClock.*time is frozen"):
            await bus.drain(timeout=0.05, advance_clock=False)
        assert clock.now() == 0
        await clock.advance(5)
        await bus.drain(advance_clock=False)


async def test_closing_a_consumer_returns_its_unsettled_deliveries() -> None:
    broker = MemoryBroker()
    router = Router()
    router.subscribe(Tick, group="g")(_ignore)
    bus = EventBus(broker, routers=[router], middleware=())
    [subscription] = bus.subscriptions
    await broker.connect()
    consumer = await broker.subscribe(subscription)
    await broker.send_raw("Tick", b"not json", {"ce_id": "1"})
    iterator = aiter(consumer)
    first = await anext(iterator)
    assert first.attempt == 1
    assert first.envelope is None
    assert first.decode_error is not None
    assert broker.pending()["unsettled"] == 1
    await consumer.close()
    assert broker.pending() == {"queued": 1, "unsettled": 0, "delayed": 0}
    again = await anext(aiter(await broker.subscribe(subscription)))
    assert again.attempt == 1  # handed back unstarted: not counted
    assert again.body == b"not json"


async def _ignore(event: Tick) -> None: ...


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    import asyncio

    clock, woke = FakeClock(), []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    tasks = [asyncio.ensure_future(sleeper(s)) for s in (3, 1, 2)]
    await wait_until(lambda: clock.sleepers == 3, timeout=5)
    await clock.advance(2.5)
    assert woke == [1, 2]
    assert clock.now() == 2.5
    await clock.advance(1)
    await asyncio.gather(*tasks)
    assert woke == [1, 2, 3]
    with pytest.raises(ValueError, match="forward"):
        await clock.advance(-1)


def test_a_named_broker_serves_bus_after_bus_across_event_loops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each test of a suite runs in an event loop of its own; a ``memory://NAME`` broker that
    outlives one test (held by a module, or not yet collected) must serve the next."""
    router, seen = Router(), []

    @router.subscribe(Tick, group="ticks")
    async def handle(event: Tick) -> None:
        seen.append(event.n)

    broker = MemoryBroker.named("across-loops")

    async def run(n: int, queued_for_later: int | None = None) -> None:
        async with EventBus(broker, routers=[router]) as bus:
            await bus.publish(Tick(n=n))
            await bus.drain()
        if queued_for_later is not None:  # no consumer runs: it waits in the group's queue
            async with EventBus(broker) as publisher:
                await publisher.publish(Tick(n=queued_for_later))

    asyncio.run(run(1, queued_for_later=2))
    asyncio.run(run(3))
    assert seen == [1, 2, 3]
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


class Pinged(Event):
    n: int


async def test_a_removed_group_is_no_longer_kept_for() -> None:
    bus = EventBus("memory://")

    @bus.subscribe(Pinged, group="short-lived")
    async def on_ping(event: Pinged) -> None: ...

    async with bus:
        await bus.publish(Pinged(n=1))
        await bus.drain()
        subscription = bus.subscriptions[0]
        assert await bus.broker.lag(subscription) == 0  # type: ignore[attr-defined]
        await bus.broker.remove_group(subscription)  # type: ignore[attr-defined]
        assert await bus.broker.lag(subscription) is None  # type: ignore[attr-defined]


async def test_a_consumer_cancelled_as_it_is_woken_hands_the_message_on() -> None:
    """Two consumers wait on one group queue; the one woken for a message is cancelled
    before it runs: the other takes the message, and nothing is taken twice."""
    from eventbus.brokers.memory.queues import GroupQueue, Message

    group = GroupQueue("g", "t", is_pattern=False)
    first = asyncio.ensure_future(group.queue.get())
    second = asyncio.ensure_future(group.queue.get())
    await wait_until(lambda: len(group.queue._getters) == 2, timeout=5)
    message = Message("t", None, ({}, b"x"), None)
    group.queue.put_nowait(message)  # wakes the first waiter...
    first.cancel()  # ...which is cancelled before it can take it
    assert await asyncio.wait_for(second, 5) is message
    assert first.cancelled()
    assert group.queue.qsize() == 0


async def test_released_messages_go_back_to_the_front_in_the_order_released() -> None:
    from eventbus.brokers.memory.queues import GroupQueue, Message

    queue = GroupQueue("g", "t", is_pattern=False).queue
    a, b, c, d = (Message("t", None, ({}, bytes([i])), None) for i in range(4))
    for message in (a, b, c, d):
        queue.put_nowait(message)
    taken = [queue.get_nowait(), queue.get_nowait(), queue.get_nowait()]
    queue.put_front(taken[0])
    queue.put_front(taken[1])
    assert [queue.get_nowait() for _ in range(3)] == [a, b, d]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
