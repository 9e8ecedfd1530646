"""The pytest plugin's fixtures, used the way a user's test module would."""

from __future__ import annotations

import pytest

from eventbus import Context, Event, EventBus, NoHandlerError, Router
from eventbus.testing import published

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    order_id: str


class InvoiceSent(Event):
    order_id: str


billing = Router()


@billing.subscribe(OrderPlaced)
async def send_invoice(event: OrderPlaced, ctx: Context) -> None:
    await ctx.publish(InvoiceSent(order_id=event.order_id))


@billing.subscribe(InvoiceSent)
async def archive(event: InvoiceSent) -> None: ...


@pytest.fixture
def eventbus_routers() -> list[Router]:
    return [billing]


async def test_memory_bus_fixture_runs_the_routers(memory_bus: EventBus) -> None:
    await memory_bus.publish(OrderPlaced(order_id="o1"))
    await memory_bus.drain()
    assert [e.json() for e in published(memory_bus, InvoiceSent)] == [{"order_id": "o1"}]


async def test_memory_bus_fixture_is_strict(memory_bus: EventBus) -> None:
    class OrderPlacd(Event):
        order_id: str

    with pytest.raises(NoHandlerError, match="did you mean 'OrderPlaced'"):
        await memory_bus.publish(OrderPlacd(order_id="o1"))
