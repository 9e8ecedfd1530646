"""Helpers shared by the middleware tests (imported as a plain module from this folder)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from eventbus import Context, EventBus
from eventbus.brokers.memory import MemoryBroker
from eventbus.clock import FakeClock

T = TypeVar("T")

MakeContext = Callable[..., Context]


async def drive(
    clock: FakeClock, coro: Coroutine[Any, Any, T], *, step: float = 1000.0, turns: int = 10_000
) -> T:
    """Run ``coro`` to completion, jumping the clock forward whenever it is waiting on it.

    Fails after ``turns`` turns of the event loop, so a coroutine that never finishes fails
    the test instead of hanging it.
    """
    task = asyncio.get_running_loop().create_task(coro)
    for _ in range(turns):
        if task.done():
            return task.result()
        await asyncio.sleep(0)
        if clock.sleepers:
            await clock.advance(step)
    task.cancel()
    raise AssertionError(f"{coro!r} did not finish within {turns} event-loop turns")


class RecordingClock(FakeClock):
    """A FakeClock that remembers every sleep it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


async def settle(
    bus: EventBus, clock: FakeClock, *, step: float = 1000.0, turns: int = 2000
) -> None:
    """Run the bus until nothing is queued, running or delayed, jumping over every wait.

    Fails (instead of hanging) when the bus is still busy after ``turns`` rounds.
    """
    broker = bus.broker
    assert isinstance(broker, MemoryBroker)
    quiet = 0
    for _ in range(turns):
        for _ in range(3):
            await asyncio.sleep(0)
        if clock.sleepers:
            await clock.advance(step)
            quiet = 0
            continue
        idle = not bus.busy and not any(broker.pending().values())
        quiet = quiet + 1 if idle else 0
        if quiet >= 3:  # idle for several turns: a just-woken consumer has had its chance
            return
    raise AssertionError(f"the bus did not settle: {broker.pending()}, busy={bus.busy}")


async def wait_for(condition: Callable[[], bool], *, turns: int = 10_000) -> None:
    """Let the event loop run until ``condition()`` holds; fail after ``turns`` turns."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")
