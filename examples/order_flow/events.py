"""The order flow's messages: the facts every variant shares, and the saga's commands.

Facts are named in the past tense and published by the service that owns them; commands
(``ReserveStock``…) are the orchestrator's requests to one service. Every message is published
with the order id as its key, so one order's messages are handled in order.
"""

from __future__ import annotations

from eventbus import Event


class OrderCreated(Event):
    event_type = "orders.order.created"
    order_id: str
    sku: str
    quantity: int
    amount_cents: int


class PaymentProcessed(Event):
    event_type = "payments.payment.processed"
    order_id: str
    payment_id: str


class PaymentFailed(Event):
    event_type = "payments.payment.failed"
    order_id: str
    reason: str


class StockReserved(Event):
    event_type = "inventory.stock.reserved"
    order_id: str


class StockReservationFailed(Event):
    event_type = "inventory.stock.reservation-failed"
    order_id: str
    reason: str


class ShipmentScheduled(Event):
    event_type = "shipping.shipment.scheduled"
    order_id: str


class OrderConfirmed(Event):
    event_type = "orders.order.confirmed"
    order_id: str


class OrderCancelled(Event):
    event_type = "orders.order.cancelled"
    order_id: str
    reason: str


# The orchestrator's commands, each answered by one service with one of the facts above.


class ReserveStock(Event):
    event_type = "inventory.commands.reserve"
    order_id: str
    sku: str
    quantity: int


class ReleaseStock(Event):
    event_type = "inventory.commands.release"
    order_id: str


class ChargePayment(Event):
    event_type = "payments.commands.charge"
    order_id: str
    amount_cents: int


class RefundPayment(Event):
    event_type = "payments.commands.refund"
    order_id: str


class ScheduleShipment(Event):
    event_type = "shipping.commands.schedule"
    order_id: str


class ConfirmOrder(Event):
    event_type = "orders.commands.confirm"
    order_id: str


class CancelOrder(Event):
    event_type = "orders.commands.cancel"
    order_id: str
    reason: str
