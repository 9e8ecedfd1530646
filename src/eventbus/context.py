"""The ``Context`` handed to middleware and handlers, and the causal chain of publishes.

While a handler runs, the envelope it handles is the *current* envelope (a context variable),
so any publish made during the handler — through ``ctx.publish`` or ``bus.publish`` — copies
its ``correlationid`` and sets ``causationid`` to its id, without user code.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.envelope import Envelope
    from eventbus.event import Event
    from eventbus.router import Subscription
    from eventbus.types import Delivery

__all__ = ["Context", "current_envelope"]

current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "eventbus_current_envelope", default=None
)


class Context:
    """Everything a handler or middleware knows about the delivery being handled.

    ``state`` is a dict for middleware to pass values inward (for example a database session).
    ``event`` is the validated model once the handler's model has been applied.
    """

    __slots__ = ("attempt", "bus", "delivery", "envelope", "event", "state", "subscription")

    def __init__(
        self,
        *,
        envelope: Envelope,
        subscription: Subscription,
        bus: EventBus,
        delivery: Delivery | None = None,
        attempt: int = 1,
    ) -> None:
        self.envelope = envelope
        self.subscription = subscription
        self.bus = bus
        self.delivery = delivery
        self.attempt = attempt
        self.event: Event | None = None
        self.state: dict[str, Any] = {}

    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
    ) -> Envelope:
        """Publish a follow-up event caused by the one being handled (see ``EventBus.publish``)."""
        token = current_envelope.set(self.envelope)
        try:
            return await self.bus.publish(event, key=key, headers=headers, subject=subject)
        finally:
            current_envelope.reset(token)

    def __repr__(self) -> str:
        return (
            f"Context(type={self.envelope.type!r}, id={self.envelope.id!r}, "
            f"group={self.subscription.group!r}, attempt={self.attempt})"
        )
