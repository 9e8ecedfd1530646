"""The order flow as an **orchestrated saga**: one process holds the flow and undoes it.

    reserve stock → charge payment → schedule shipment → confirm the order
         ↑ release stock ← refund payment ←  (a failure or a timeout)  → cancel the order

The saga sends each service a command and waits for its answer; its state, the commands it
sends and the record of the event that moved it commit in one transaction (``SqlSagaStore``
with the outbox), so a crash neither loses nor repeats a step. When a step fails — the card
is declined, or shipping does not answer within ``SHIPMENT_TIMEOUT`` seconds — the completed
steps are compensated in reverse order, then the order is cancelled.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from eventbus import Context, Router
from eventbus.sagas import Saga, SagaStep, Step, orchestration
from examples.order_flow.domain import Shop
from examples.order_flow.events import (
    CancelOrder,
    ChargePayment,
    ConfirmOrder,
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ScheduleShipment,
    ShipmentScheduled,
    StockReservationFailed,
    StockReserved,
)
from examples.timeline import say

SHIPMENT_TIMEOUT = float(os.environ.get("SHIPMENT_TIMEOUT", "1.5"))
"""Seconds the saga waits for shipping (short, so the demo's timeout comes quickly)."""


class OrderState(BaseModel):
    order_id: str
    sku: str
    quantity: int
    amount_cents: int
    payment_id: str | None = None


def reserve(step: SagaStep[OrderState]) -> None:
    s = step.state
    step.publish(ReserveStock(order_id=s.order_id, sku=s.sku, quantity=s.quantity))


def release(step: SagaStep[OrderState]) -> None:
    say("saga", f"compensating: release the stock of {step.state.order_id}")
    step.publish(ReleaseStock(order_id=step.state.order_id))


def charge(step: SagaStep[OrderState]) -> None:
    step.publish(ChargePayment(order_id=step.state.order_id, amount_cents=step.state.amount_cents))


def paid(event: PaymentProcessed, step: SagaStep[OrderState]) -> None:
    step.state.payment_id = event.payment_id


def refund(step: SagaStep[OrderState]) -> None:
    say("saga", f"compensating: refund the payment of {step.state.order_id}")
    step.publish(RefundPayment(order_id=step.state.order_id))


def ship(step: SagaStep[OrderState]) -> None:
    step.publish(ScheduleShipment(order_id=step.state.order_id))


def confirm(step: SagaStep[OrderState]) -> None:
    say("saga", f"{step.state.order_id} completed: confirming the order")
    step.publish(ConfirmOrder(order_id=step.state.order_id))


def cancel(step: SagaStep[OrderState]) -> None:
    say("saga", f"{step.state.order_id} compensated: cancelling the order")
    step.publish(CancelOrder(order_id=step.state.order_id, reason="the order saga was compensated"))


def order_saga() -> Saga[OrderState]:
    return orchestration(
        "shop.order",
        OrderState,
        starts=OrderCreated,
        key="order_id",
        init=lambda e: OrderState(
            order_id=e.order_id, sku=e.sku, quantity=e.quantity, amount_cents=e.amount_cents
        ),
        steps=[
            Step("reserve_stock", run=reserve, done=StockReserved,
                 failed=StockReservationFailed, compensate=release),
            Step("charge_payment", run=charge, done=PaymentProcessed, failed=PaymentFailed,
                 compensate=refund, on_done=paid),
            Step("schedule_shipment", run=ship, done=ShipmentScheduled, timeout=SHIPMENT_TIMEOUT),
        ],
        on_completed=confirm,
        on_compensated=cancel,
        compensation_retries=(0.1, 0.5, 2.0),
    )  # fmt: skip


def services(shop: Shop) -> dict[str, Router]:
    """The services the saga drives, each answering its commands (the order service's own
    commands are in ``orders``)."""
    inventory, payments, shipping = Router(), Router(), Router()

    @inventory.subscribe(ReserveStock, group="inventory")
    async def on_reserve(command: ReserveStock, ctx: Context) -> None:
        if shop.reserve(command.order_id, command.sku, command.quantity):
            say("inventory", f"reserved {command.quantity} x {command.sku}", ctx)
            await ctx.publish(StockReserved(order_id=command.order_id), key=command.order_id)
        else:
            failed = StockReservationFailed(order_id=command.order_id, reason="out of stock")
            await ctx.publish(failed, key=command.order_id)

    @inventory.subscribe(ReleaseStock, group="inventory.release")
    async def on_release(command: ReleaseStock, ctx: Context) -> None:
        shop.release(command.order_id)
        say("inventory", f"released the stock of {command.order_id}", ctx)

    @payments.subscribe(ChargePayment, group="payments")
    async def on_charge(command: ChargePayment, ctx: Context) -> None:
        order_id = command.order_id
        payment_id = shop.charge(order_id, command.amount_cents)
        if payment_id is None:
            say("payments", f"card declined for {order_id}", ctx)
            await ctx.publish(
                PaymentFailed(order_id=order_id, reason="card declined"), key=order_id
            )
        else:
            say("payments", f"charged {command.amount_cents / 100:.2f} for {order_id}", ctx)
            processed = PaymentProcessed(order_id=order_id, payment_id=payment_id)
            await ctx.publish(processed, key=order_id)

    @payments.subscribe(RefundPayment, group="payments.refund")
    async def on_refund(command: RefundPayment, ctx: Context) -> None:
        shop.refund(command.order_id)
        say("payments", f"refunded {command.order_id}", ctx)

    @shipping.subscribe(ScheduleShipment, group="shipping")
    async def on_ship(command: ScheduleShipment, ctx: Context) -> None:
        if shop.ship(command.order_id):
            say("shipping", f"shipment scheduled for {command.order_id}", ctx)
            await ctx.publish(ShipmentScheduled(order_id=command.order_id), key=command.order_id)
        else:
            say("shipping", f"(no answer for {command.order_id}: the service is down)", ctx)

    return {"inventory": inventory, "payments": payments, "shipping": shipping}
