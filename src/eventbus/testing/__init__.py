"""What a user's tests need: a fake clock, condition waits, the published events, the contract.

* :class:`FakeClock` — time that moves only when told (``await clock.advance(10)``).
* :func:`wait_until` — wait for a condition with a deadline instead of sleeping.
* :func:`published` — the envelopes a memory-backed bus has published, optionally by type.
* :class:`BrokerContract` — the conformance suite every broker adapter passes.
* a pytest plugin (registered automatically) with ``memory_bus`` and ``fake_clock`` fixtures.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from eventbus.brokers.memory import MemoryBroker
from eventbus.bus import EventBus
from eventbus.clock import FakeClock
from eventbus.envelope import Envelope
from eventbus.event import Event
from eventbus.testing.contract import BrokerContract

__all__ = ["BrokerContract", "FakeClock", "published", "wait_until"]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    message: str = "",
) -> None:
    """Return as soon as ``condition()`` is true; raise ``TimeoutError`` after ``timeout`` seconds.

    ``condition`` may be a plain or an async callable. It is checked after every turn of the
    event loop (and at most every few milliseconds once it has been false for a while).
    """
    deadline = time.monotonic() + timeout
    pause = 0.0
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(pause)
        pause = min(0.01, pause + 0.001)


def published(bus: EventBus, event_type: type[Event] | str | None = None) -> list[Envelope]:
    """The envelopes ``bus`` has published on its memory broker, oldest first.

    The broker keeps the latest ``record`` of them (1 000 unless ``EventBus("memory://",
    record=...)`` says otherwise).
    """
    broker = bus.broker
    if not isinstance(broker, MemoryBroker):
        raise TypeError("published() reads the memory broker's record; this bus has another broker")
    wanted = event_type.event_type if isinstance(event_type, type) else event_type
    return [e for e in broker.published if wanted is None or e.type == wanted]
