"""The order flow of the saga tests: reserve stock → charge payment → schedule shipment, with
the compensations release stock ← refund payment, and the services that answer the commands.

``Faults`` is the world outside the saga: what the payment service answers, whether the
shipping service answers at all, and how often the systems a compensation calls fail first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from eventbus import Context, Event, PermanentError, Router
from eventbus.sagas import Saga, SagaStep, Step, orchestration


class OrderCreated(Event):
    event_type = "shop.order.created"
    order_id: str
    amount: int


class ReserveStock(Event):
    event_type = "shop.stock.reserve"
    order_id: str


class StockReserved(Event):
    event_type = "shop.stock.reserved"
    order_id: str


class StockReservationFailed(Event):
    event_type = "shop.stock.reservation_failed"
    order_id: str
    reason: str = ""


class ReleaseStock(Event):
    event_type = "shop.stock.release"
    order_id: str


class ChargePayment(Event):
    event_type = "shop.payment.charge"
    order_id: str
    amount: int


class PaymentProcessed(Event):
    event_type = "shop.payment.processed"
    order_id: str
    payment_id: str


class PaymentFailed(Event):
    event_type = "shop.payment.failed"
    order_id: str
    reason: str = ""


class RefundPayment(Event):
    event_type = "shop.payment.refund"
    order_id: str
    payment_id: str


class ScheduleShipment(Event):
    event_type = "shop.shipment.schedule"
    order_id: str


class ShipmentScheduled(Event):
    event_type = "shop.shipment.scheduled"
    order_id: str


class CancelOrder(Event):
    event_type = "shop.order.cancel"
    order_id: str


class OrderConfirmed(Event):
    event_type = "shop.order.confirmed"
    order_id: str


COMMANDS = (ReserveStock, ChargePayment, ScheduleShipment, ReleaseStock, RefundPayment)


class OrderState(BaseModel):
    order_id: str
    amount: int
    payment_id: str | None = None


@dataclasses.dataclass
class Faults:
    """What the outside world does; the compensations call ``check`` before they publish."""

    payment: str = "ok"  # "ok", "declined", "refused here" (the step raises)
    shipping_answers: bool = True
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    calls: dict[str, int] = dataclasses.field(default_factory=dict)
    done: list[str] = dataclasses.field(default_factory=list)
    """The compensating commands and outcomes the services received, in order."""
    hooks: dict[str, Callable[[], None]] = dataclasses.field(default_factory=dict)
    """Run when a step passes the point of that name (a crash test kills itself there)."""

    def visit(self, point: str) -> None:
        hook = self.hooks.get(point)
        if hook is not None:
            hook()

    def check(self, system: str) -> None:
        self.calls[system] = self.calls.get(system, 0) + 1
        left = self.failures.get(system, 0)
        if left:
            self.failures[system] = left - 1
            raise ConnectionError(f"{system} is unreachable")


def order_saga(faults: Faults, **options: Any) -> Saga[OrderState]:
    """The orchestrated order saga."""

    def reserve(step: SagaStep[OrderState]) -> None:
        step.publish(ReserveStock(order_id=step.state.order_id))

    def charge(step: SagaStep[OrderState]) -> None:
        step.publish(ChargePayment(order_id=step.state.order_id, amount=step.state.amount))
        faults.visit("charge")
        if faults.payment == "refused here":
            raise PermanentError("the card is blocked")

    def ship(step: SagaStep[OrderState]) -> None:
        step.publish(ScheduleShipment(order_id=step.state.order_id))

    def paid(event: PaymentProcessed, step: SagaStep[OrderState]) -> None:
        step.state.payment_id = event.payment_id

    def release(step: SagaStep[OrderState]) -> None:
        faults.check("inventory")
        faults.visit("release")
        step.publish(ReleaseStock(order_id=step.state.order_id))

    def refund(step: SagaStep[OrderState]) -> None:
        faults.check("payments")
        payment_id = step.state.payment_id or "unknown"
        step.publish(RefundPayment(order_id=step.state.order_id, payment_id=payment_id))

    def cancel(step: SagaStep[OrderState]) -> None:
        step.publish(CancelOrder(order_id=step.state.order_id))

    def confirm(step: SagaStep[OrderState]) -> None:
        step.publish(OrderConfirmed(order_id=step.state.order_id))

    options.setdefault("compensation_retries", (1.0, 10.0))
    return orchestration(
        "shop.order",
        OrderState,
        starts=OrderCreated,
        key="order_id",
        init=lambda e: OrderState(order_id=e.order_id, amount=e.amount),
        steps=[
            Step("reserve_stock", run=reserve, done=StockReserved,
                 failed=StockReservationFailed, compensate=release),
            Step("charge_payment", run=charge, done=PaymentProcessed, failed=PaymentFailed,
                 compensate=refund, timeout=30, on_done=paid),
            Step("schedule_shipment", run=ship, done=ShipmentScheduled, timeout=60),
        ],
        on_completed=confirm,
        on_compensated=cancel,
        **options,
    )  # fmt: skip


def services(faults: Faults) -> Router:
    """Stock, payment and shipping services: they answer the saga's commands."""
    router = Router()

    @router.subscribe(ReserveStock)
    async def stock(command: ReserveStock, ctx: Context) -> None:
        await ctx.publish(StockReserved(order_id=command.order_id), key=command.order_id)

    @router.subscribe(ChargePayment)
    async def payment(command: ChargePayment, ctx: Context) -> None:
        order_id = command.order_id
        if faults.payment == "declined":
            await ctx.publish(PaymentFailed(order_id=order_id, reason="declined"), key=order_id)
        else:
            reply = PaymentProcessed(order_id=order_id, payment_id=f"pay-{order_id}")
            await ctx.publish(reply, key=order_id)

    @router.subscribe(ScheduleShipment)
    async def shipping(command: ScheduleShipment, ctx: Context) -> None:
        if faults.shipping_answers:
            await ctx.publish(ShipmentScheduled(order_id=command.order_id), key=command.order_id)

    @router.subscribe(ReleaseStock)
    async def restock(command: ReleaseStock) -> None:
        faults.done.append(command.event_type)

    @router.subscribe(RefundPayment)
    async def refunds(command: RefundPayment) -> None:
        faults.done.append(command.event_type)

    @router.subscribe(CancelOrder)
    async def cancellations(command: CancelOrder) -> None:
        faults.done.append(command.event_type)

    @router.subscribe(OrderConfirmed)
    async def confirmations(event: OrderConfirmed) -> None:
        faults.done.append(event.event_type)

    return router


FLOW = ["shop.stock.reserve", "shop.payment.charge", "shop.shipment.schedule"]
