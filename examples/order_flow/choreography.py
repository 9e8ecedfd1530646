"""The order flow as **choreography**: each service reacts to the others' events.

    OrderCreated → payments → PaymentProcessed → inventory → StockReserved → shipping
                            ↘ PaymentFailed → orders: cancelled       → ShipmentScheduled → orders

Nothing knows the whole flow: to learn why an order was not shipped, follow its events through
every service. Nothing waits either: when shipping never answers, no one notices, and the
payment and the reserved stock stay taken. That is the gap the saga closes.
"""

from __future__ import annotations

from eventbus import Context, RetryLater, Router
from examples.order_flow.domain import Shop
from examples.order_flow.events import (
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    ShipmentScheduled,
    StockReservationFailed,
    StockReserved,
)
from examples.timeline import say


def routers(shop: Shop) -> dict[str, Router]:
    """The payment, inventory and shipping services, by name (the order service's part is in
    ``orders``: it confirms on ShipmentScheduled, cancels on PaymentFailed)."""
    payments, inventory, shipping = Router(), Router(), Router()
    lines: dict[str, OrderCreated] = {}  # the inventory service's copy of each order's lines

    @payments.subscribe(OrderCreated, group="payments")
    async def charge(event: OrderCreated, ctx: Context) -> None:
        order_id = event.order_id
        payment_id = shop.charge(order_id, event.amount_cents)
        if payment_id is None:
            say("payments", f"card declined for {order_id}", ctx)
            await ctx.publish(
                PaymentFailed(order_id=order_id, reason="card declined"), key=order_id
            )
            return
        say("payments", f"charged {event.amount_cents / 100:.2f} for {order_id}", ctx)
        await ctx.publish(PaymentProcessed(order_id=order_id, payment_id=payment_id), key=order_id)

    @inventory.subscribe(OrderCreated, group="inventory.orders")
    async def remember(event: OrderCreated) -> None:
        lines[event.order_id] = event

    @inventory.subscribe(PaymentProcessed, group="inventory.reservations")
    async def reserve(event: PaymentProcessed, ctx: Context) -> None:
        order = lines.get(event.order_id)
        if order is None:  # the two groups run side by side: the lines may not be here yet
            raise RetryLater(0.05)
        if not shop.reserve(order.order_id, order.sku, order.quantity):
            say("inventory", f"out of stock for {order.order_id}", ctx)
            failed = StockReservationFailed(order_id=order.order_id, reason="out of stock")
            await ctx.publish(failed, key=order.order_id)
            return
        say("inventory", f"reserved {order.quantity} x {order.sku}", ctx)
        await ctx.publish(StockReserved(order_id=order.order_id), key=order.order_id)

    @shipping.subscribe(StockReserved, group="shipping")
    async def ship(event: StockReserved, ctx: Context) -> None:
        if not shop.ship(event.order_id):
            say("shipping", f"(no answer for {event.order_id}: the service is down)", ctx)
            return
        say("shipping", f"shipment scheduled for {event.order_id}", ctx)
        await ctx.publish(ShipmentScheduled(order_id=event.order_id), key=event.order_id)

    return {"payments": payments, "inventory": inventory, "shipping": shipping}
