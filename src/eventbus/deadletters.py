"""Dead letters: what they record, and the store every adapter with a DLQ exposes.

A dead letter keeps the message exactly as it arrived (headers and bytes) together with its
provenance: where it was going, which group and handler failed, why, how often, and when. A
replay puts the original message back on the subscription it failed in, with its event id
unchanged, so an idempotent consumer still recognises it.
"""

from __future__ import annotations

import dataclasses
import traceback
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from eventbus.types import Delivery

__all__ = ["DeadLetter", "DeadLetterStore", "describe_failure"]

_TRACEBACK_LINES = 12


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A message that will not be retried, with the original bytes and why it failed."""

    id: str
    destination: str
    group: str
    subscription: str
    reason: str
    error_type: str
    error_message: str
    attempts: int
    headers: Mapping[str, Any]
    body: bytes
    event_id: str | None = None
    event_type: str | None = None
    traceparent: str | None = None
    traceback: str = ""
    first_failure_at: datetime | None = None
    last_failure_at: datetime | None = None


def describe_failure(
    delivery: Delivery,
    *,
    group: str,
    subscription: str,
    reason: str,
    exc: BaseException | None = None,
    first_failure_at: datetime | None = None,
) -> DeadLetter:
    """Build the dead-letter record for ``delivery``, which failed with ``exc`` (if any)."""
    now = datetime.now(timezone.utc)
    envelope = delivery.envelope
    excerpt = ""
    if exc is not None:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        excerpt = "\n".join("".join(lines).splitlines()[-_TRACEBACK_LINES:])
    return DeadLetter(
        id=str(uuid.uuid4()),
        destination=delivery.destination,
        group=group,
        subscription=subscription,
        reason=reason,
        error_type=f"{type(exc).__module__}.{type(exc).__qualname__}" if exc else "",
        error_message=str(exc) if exc else reason,
        attempts=delivery.attempt,
        headers=dict(delivery.headers),
        body=delivery.body,
        event_id=envelope.id if envelope else None,
        event_type=envelope.type if envelope else None,
        traceparent=envelope.traceparent if envelope else None,
        traceback=excerpt,
        first_failure_at=first_failure_at or now,
        last_failure_at=now,
    )


class DeadLetterStore(Protocol):
    """List, inspect, replay and purge dead letters (``bus.dead_letters``)."""

    async def list(self, *, group: str | None = None, limit: int = 100) -> Sequence[DeadLetter]:
        """Oldest first; ``group`` narrows to one consumer group."""

    async def get(self, dead_letter_id: str) -> DeadLetter | None: ...

    async def replay(self, dead_letter_id: str) -> None:
        """Redeliver the original message to the group it failed in and remove it from the DLQ.

        Raises ``KeyError`` for an unknown id.
        """

    async def purge(self, *, group: str | None = None) -> int:
        """Delete dead letters (all, or one group's); returns how many."""
