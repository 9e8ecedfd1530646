"""The ``extra`` fields of the log records eventbus writes about a failed delivery.

Every record logged for one failed try, redelivery, dead-lettering or settle failure carries
the same fields, so a JSON formatter (or a ``%(eventbus_event_id)s`` format string) can show
them and a log search can follow one event across attempts. The names start with
``eventbus_``, which no attribute of :class:`logging.LogRecord` does; a field that does not
apply (no envelope for undecodable bytes, say) is ``None`` rather than missing.
"""

from __future__ import annotations

from eventbus.envelope import Envelope
from eventbus.types import Delivery, SubscriptionView

__all__ = [
    "ATTEMPT",
    "CORRELATION_ID",
    "DESTINATION",
    "EVENT_ID",
    "EVENT_TYPE",
    "FIELDS",
    "GROUP",
    "OUTCOME",
    "SUBSCRIPTION",
    "delivery_fields",
    "log_fields",
]

EVENT_ID = "eventbus_event_id"
"""The envelope's ``id``: the same on every redelivery of the event."""
EVENT_TYPE = "eventbus_event_type"
CORRELATION_ID = "eventbus_correlation_id"
"""The envelope's ``correlationid`` (shared by an event and everything published because of it)."""
ATTEMPT = "eventbus_attempt"
"""The delivery attempt (1 for the first delivery)."""
SUBSCRIPTION = "eventbus_subscription"
"""The handler's qualified name."""
GROUP = "eventbus_group"
DESTINATION = "eventbus_destination"
"""The destination (topic, stream, routing key) the message came from."""
OUTCOME = "eventbus_outcome"
"""What happens next: ``retrying`` (another try now), ``redelivering`` (later, by the broker),
``dead-lettered``, ``settle-retrying``, ``released`` or ``not-settled``."""

FIELDS = (EVENT_ID, EVENT_TYPE, CORRELATION_ID, ATTEMPT, SUBSCRIPTION, GROUP, DESTINATION, OUTCOME)
"""Every field name, in the order documented in ``docs/observability.md``."""


def log_fields(
    outcome: str,
    *,
    envelope: Envelope | None,
    attempt: int | None,
    destination: str | None,
    subscription: SubscriptionView | None,
) -> dict[str, object]:
    """The ``extra=`` of a failure record; every field is present, ``None`` when unknown."""
    return {
        EVENT_ID: envelope.id if envelope is not None else None,
        EVENT_TYPE: envelope.type if envelope is not None else None,
        CORRELATION_ID: envelope.correlationid if envelope is not None else None,
        ATTEMPT: attempt,
        SUBSCRIPTION: subscription.name if subscription is not None else None,
        GROUP: subscription.group if subscription is not None else None,
        DESTINATION: destination,
        OUTCOME: outcome,
    }


def delivery_fields(
    delivery: Delivery, subscription: SubscriptionView | None, outcome: str
) -> dict[str, object]:
    """:func:`log_fields` of ``delivery`` (its envelope, attempt and destination)."""
    return log_fields(
        outcome,
        envelope=delivery.envelope,
        attempt=delivery.attempt,
        destination=delivery.destination,
        subscription=subscription,
    )
