"""The same order flow written both ways, run side by side on the memory bus.

Choreography is plain handlers reacting to each other's events: nothing remembers the flow,
and undoing is each service's own reaction to a failure event. Orchestration is the saga:
one place holds the flow, its state and its compensations. Both must reach the same outcome
for a paid order and for a declined one.
"""

from __future__ import annotations

import pytest

from eventbus import Context, EventBus, Router
from eventbus.testing import published
from eventbus.testing.sagas import SagaScenario
from tests.sagas.orderflow import (
    CancelOrder,
    Faults,
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    ReleaseStock,
    ShipmentScheduled,
    StockReserved,
    order_saga,
    services,
)

pytestmark = pytest.mark.anyio


def choreography(declined: set[str]) -> Router:
    router = Router()

    @router.subscribe(OrderCreated)
    async def stock(event: OrderCreated, ctx: Context) -> None:
        await ctx.publish(StockReserved(order_id=event.order_id), key=event.order_id)

    @router.subscribe(StockReserved)
    async def payment(event: StockReserved, ctx: Context) -> None:
        order_id = event.order_id
        if order_id in declined:
            await ctx.publish(PaymentFailed(order_id=order_id, reason="declined"), key=order_id)
        else:
            await ctx.publish(PaymentProcessed(order_id=order_id, payment_id="p"), key=order_id)

    @router.subscribe(PaymentProcessed)
    async def shipping(event: PaymentProcessed, ctx: Context) -> None:
        await ctx.publish(ShipmentScheduled(order_id=event.order_id), key=event.order_id)

    @router.subscribe(PaymentFailed)
    async def restock(event: PaymentFailed, ctx: Context) -> None:
        await ctx.publish(ReleaseStock(order_id=event.order_id), key=event.order_id)

    @router.subscribe(ReleaseStock)
    async def cancel(event: ReleaseStock, ctx: Context) -> None:
        await ctx.publish(CancelOrder(order_id=event.order_id), key=event.order_id)

    return router


def outcomes(bus: EventBus) -> dict[str, list[str]]:
    """Per order, the outcomes it reached: shipped, stock released, cancelled."""
    found: dict[str, list[str]] = {}
    for kind in (ShipmentScheduled, ReleaseStock, CancelOrder):
        for envelope in published(bus, kind):
            order_id = kind.model_validate_json(envelope.data).order_id
            found.setdefault(order_id, []).append(kind.event_type)
    return found


async def test_choreography_and_orchestration_of_one_flow_reach_the_same_outcomes() -> None:
    orders = [OrderCreated(order_id="paid", amount=10), OrderCreated(order_id="no", amount=99)]
    expected = {
        "paid": ["shop.shipment.scheduled"],
        "no": ["shop.stock.release", "shop.order.cancel"],
    }
    choreographed = EventBus("memory://", service="shop", routers=[choreography({"no"})])
    async with choreographed:
        for order in orders:
            await choreographed.publish(order, key=order.order_id)
        await choreographed.drain()
    assert outcomes(choreographed) == expected

    faults = Faults()
    saga = order_saga(faults)
    async with SagaScenario(saga, routers=[services(faults)]) as scenario:
        await scenario.publish(orders[0], key="paid")
        faults.payment = "declined"
        await scenario.publish(orders[1], key="no")
        statuses = {o.order_id: (await scenario.instance(saga, o.order_id)).status for o in orders}
    assert outcomes(scenario.bus) == expected
    assert statuses == {"paid": "completed", "no": "compensated"}
