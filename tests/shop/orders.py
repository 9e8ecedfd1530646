from __future__ import annotations

from eventbus import Event


class Created(Event):
    event_type = "orders.created"
    order_id: str
