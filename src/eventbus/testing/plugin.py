"""The pytest plugin eventbus registers: ready in-memory buses for a user's unit tests.

Fixtures (async tests run under anyio's pytest plugin: mark them ``@pytest.mark.anyio``):

* ``eventbus_routers`` — override it to return the routers under test (default: none);
* ``fake_clock`` — a :class:`~eventbus.clock.FakeClock` driving the memory broker's delays;
* ``memory_bus`` — a started, *strict* ``EventBus("memory://")`` with those routers: publishing
  an event no handler accepts raises, so a misspelt type name fails the test.

.. code-block:: python

    @pytest.fixture
    def eventbus_routers():
        return [billing.router]

    @pytest.mark.anyio
    async def test_invoice_is_sent(memory_bus):
        await memory_bus.publish(OrderPlaced(order_id="o1"))
        await memory_bus.drain()
        assert published(memory_bus, InvoiceSent)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventbus.bus import EventBus
from eventbus.clock import FakeClock
from eventbus.router import Router


@pytest.fixture
def eventbus_routers() -> list[Router]:
    """The routers ``memory_bus`` includes; override in your conftest.py."""
    return []


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def memory_bus(
    eventbus_routers: list[Router], fake_clock: FakeClock
) -> AsyncIterator[EventBus]:
    bus = EventBus(
        "memory://",
        service="test",
        routers=eventbus_routers,
        clock=fake_clock,
        strict=True,
        shutdown_timeout=5.0,
    )
    async with bus:
        yield bus
