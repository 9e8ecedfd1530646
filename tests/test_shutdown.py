"""Graceful shutdown on the memory bus: no handler starts once stop() is called."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eventbus import Context, Event, EventBus, Router
from eventbus.testing import wait_until

pytestmark = pytest.mark.anyio


class Job(Event):
    n: int


@pytest.mark.parametrize("concurrency", [1, 2, 4])
async def test_stop_starts_no_new_handler_and_hands_the_rest_back_uncounted(
    concurrency: int,
) -> None:
    router, started, finish = Router(), list[tuple[int, int]](), asyncio.Event()

    @router.subscribe(Job, group="jobs", concurrency=concurrency)
    async def work(event: Job, ctx: Context) -> None:
        started.append((event.n, ctx.attempt))
        await finish.wait()

    bus = EventBus("memory://shutdown-test", routers=[router], shutdown_timeout=10)
    await bus.start()
    for n in range(6):
        await bus.publish(Job(n=n), key=f"k{n}")
    await wait_until(lambda: len(started) == concurrency)
    running = list(started)
    stopping = asyncio.ensure_future(bus.stop())
    await asyncio.sleep(0)  # stop() has begun: the running handlers may now finish
    finish.set()
    await asyncio.wait_for(stopping, 5)
    assert started == running, "a handler started after stop() was called"

    again = EventBus("memory://shutdown-test", routers=[router])
    async with again:
        await again.drain()
    rest = started[len(running) :]
    assert sorted(n for n, _ in rest) == list(range(concurrency, 6))
    assert {attempt for _, attempt in rest} == {1}, "a delivery never started was counted"


async def test_released_deliveries_come_back_in_their_order() -> None:
    router, seen, finish = Router(), list[int](), asyncio.Event()

    @router.subscribe(Job, group="ordered", concurrency=2)
    async def work(event: Job) -> None:
        seen.append(event.n)
        await finish.wait()

    bus = EventBus("memory://order-test", routers=[router], shutdown_timeout=10)
    await bus.start()
    for n in range(8):
        await bus.publish(Job(n=n), key="one key")  # one key: strictly one after another
    await wait_until(lambda: seen == [0])
    stopping = asyncio.ensure_future(bus.stop())
    await asyncio.sleep(0)
    finish.set()
    await stopping
    async with EventBus("memory://order-test", routers=[router]) as again:
        await again.drain()
    assert seen == list(range(8))


async def test_every_subscription_stops_at_once() -> None:
    """With two subscriptions, the second must not start handlers while the first stops."""
    router, started, finish = Router(), list[str](), asyncio.Event()

    def worker(name: str) -> Any:
        async def work(event: Job) -> None:
            started.append(f"{name}{event.n}")
            await finish.wait()

        return work

    for name in ("a", "b"):
        router.subscribe(Job, group=f"group-{name}", concurrency=2)(worker(name))

    bus = EventBus("memory://", routers=[router], shutdown_timeout=10)
    await bus.start()
    for n in range(4):
        await bus.publish(Job(n=n), key=f"k{n}")
    await wait_until(lambda: len(started) == 4)
    running = sorted(started)
    stopping = asyncio.ensure_future(bus.stop())
    await asyncio.sleep(0)
    finish.set()
    await stopping
    assert sorted(started) == running
