"""Taking events in from the bus: a router whose handlers turn each event into deliveries.

``bus.include_router(webhook_router(store, OrderPlaced, "invoice.*"))`` subscribes to the
chosen event types (classes, names or patterns); each event consumed becomes one pending row
per endpoint whose types match, committed before the delivery is acked. A redelivery of the
same event adds nothing (the rows are unique per event and endpoint), so the bus's
at-least-once delivery becomes exactly one delivery row per endpoint.
"""

from __future__ import annotations

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.router import Router
from eventbus.webhooks.sender import WebhookSender
from eventbus.webhooks.store import WebhookStore

__all__ = ["webhook_router"]


def webhook_router(
    store: WebhookStore,
    *targets: type[Event] | str,
    group: str = "eventbus.webhooks",
    concurrency: int = 1,
    sender: WebhookSender | None = None,
) -> Router:
    """A router that takes every event of ``targets`` in for delivery. ``group`` is the
    consumer group (one per destination: ``{group}:{target}``); ``sender``, when it runs in
    this process, is woken at once instead of at its next poll."""
    if not targets:
        raise ConfigurationError(
            "webhook_router(store, ...) needs the event types to send: classes, names or "
            "patterns ('order.*', '#' is every event of one destination)"
        )
    router = Router()

    async def take_in(envelope: Envelope) -> None:
        if await store.take(envelope) and sender is not None:
            sender.signal()

    for target in targets:
        name = target if isinstance(target, str) else target.event_type
        router.subscribe(target, group=f"{group}:{name}", concurrency=concurrency)(take_in)
    return router
