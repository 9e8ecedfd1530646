"""The services' own state: stock, payments, shipments. In-process stand-ins for their databases.

Every operation is **idempotent on the order id**, as steps and compensations of a saga must
be: a command can arrive twice (at-least-once delivery), and a compensation can arrive for a
step that never took effect (a refund for a charge that timed out before it happened). Each
operation is also written to ``journal``, so a run (and its test) can see what happened in
which order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    """What the run makes go wrong: ``--fail payment`` or ``--fail shipment-timeout``."""

    payment_declined: bool = False
    shipping_silent: bool = False


@dataclass
class Shop:
    faults: Faults = field(default_factory=Faults)
    stock: dict[str, int] = field(default_factory=lambda: {"book-42": 3})
    reserved: dict[str, tuple[str, int]] = field(default_factory=dict)
    charged: dict[str, int] = field(default_factory=dict)
    shipped: set[str] = field(default_factory=set)
    journal: list[str] = field(default_factory=list)

    def reserve(self, order_id: str, sku: str, quantity: int) -> bool:
        if order_id in self.reserved:
            return True  # a repeat of a reservation that happened
        if self.stock.get(sku, 0) < quantity:
            return False
        self.stock[sku] -= quantity
        self.reserved[order_id] = (sku, quantity)
        self.journal.append(f"reserve {order_id}")
        return True

    def release(self, order_id: str) -> None:
        held = self.reserved.pop(order_id, None)
        if held is not None:  # nothing held: nothing to undo
            sku, quantity = held
            self.stock[sku] += quantity
            self.journal.append(f"release {order_id}")

    def charge(self, order_id: str, amount_cents: int) -> str | None:
        """The payment id, or None when the card is declined."""
        if self.faults.payment_declined:
            return None
        if order_id not in self.charged:
            self.charged[order_id] = amount_cents
            self.journal.append(f"charge {order_id}")
        return f"pay-{order_id}"

    def refund(self, order_id: str) -> None:
        if self.charged.pop(order_id, None) is not None:
            self.journal.append(f"refund {order_id}")

    def ship(self, order_id: str) -> bool:
        """False when the shipping service does not answer (``--fail shipment-timeout``)."""
        if self.faults.shipping_silent:
            return False
        if order_id not in self.shipped:
            self.shipped.add(order_id)
            self.journal.append(f"ship {order_id}")
        return True
