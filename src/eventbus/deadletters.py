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

from eventbus.errors import NonRetryableError, RetriesExhausted

if TYPE_CHECKING:
    from eventbus.types import Delivery

__all__ = ["FIRST_FAILURE_AT", "DeadLetter", "DeadLetterStore", "describe_failure"]

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


FIRST_FAILURE_AT = "first-failure-at"
"""``Delivery.metadata`` key: when the message first failed (ISO-8601, UTC), carried across
redeliveries so that a dead letter can say how long it had been failing."""


def describe_failure(
    delivery: Delivery,
    *,
    group: str,
    subscription: str,
    reason: str,
    exc: BaseException | None = None,
    first_failure_at: datetime | None = None,
) -> DeadLetter:
    """Build the dead-letter record for ``delivery``, which failed with ``exc`` (if any).

    For :class:`~eventbus.errors.RetriesExhausted` and
    :class:`~eventbus.errors.NonRetryableError` the record names the error they wrap (its type
    and message) and says why it was not retried. ``first_failure_at`` defaults to the time
    carried in ``delivery.metadata`` (see :data:`FIRST_FAILURE_AT`), else now.
    """
    now = datetime.now(timezone.utc)
    envelope = delivery.envelope
    reason, shown = _reason(reason, exc)
    excerpt = ""
    if exc is not None:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        excerpt = _clean("\n".join("".join(lines).splitlines()[-_TRACEBACK_LINES:]))
    return DeadLetter(
        id=str(uuid.uuid4()),
        destination=delivery.destination,
        group=group,
        subscription=subscription,
        reason=reason,
        error_type=f"{type(shown).__module__}.{type(shown).__qualname__}" if shown else "",
        error_message=_clean(str(shown)) if shown else reason,
        attempts=delivery.attempt,
        headers=dict(delivery.headers),
        body=delivery.body,
        event_id=envelope.id if envelope else None,
        event_type=envelope.type if envelope else None,
        traceparent=envelope.traceparent if envelope else None,
        traceback=excerpt,
        first_failure_at=first_failure_at or _carried_first_failure(delivery) or now,
        last_failure_at=now,
    )


def _clean(text: str) -> str:
    """``text`` as UTF-8 can carry it: half a surrogate pair (from a JSON escape) is written as
    its escape, so that every adapter can store the record."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _reason(reason: str, exc: BaseException | None) -> tuple[str, BaseException | None]:
    """The reason to record and the error to report (the wrapped one, for policy wrappers)."""
    if isinstance(exc, RetriesExhausted):
        return f"retries exhausted after {exc.attempts} deliveries", exc.last_error
    if isinstance(exc, NonRetryableError):
        return f"not retryable ({type(exc.error).__name__})", exc.error
    return reason, exc


def _carried_first_failure(delivery: Delivery) -> datetime | None:
    # getattr: adapters written before Delivery.metadata existed still dead-letter correctly.
    metadata = getattr(delivery, "metadata", None) or {}
    value = metadata.get(FIRST_FAILURE_AT)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # written by something else; the record falls back to "now"
        return None


class DeadLetterStore(Protocol):
    """List, inspect, replay and purge dead letters (``bus.dead_letters``)."""

    async def list(self, *, group: str | None = None, limit: int = 100) -> Sequence[DeadLetter]:
        """Oldest first; ``group`` narrows to one consumer group."""

    async def get(self, dead_letter_id: str) -> DeadLetter | None: ...

    async def replay(self, dead_letter_id: str) -> None:
        """Redeliver the original message to the group it failed in and remove it from the DLQ.

        Raises :class:`~eventbus.errors.DeadLetterNotFound` for an unknown id.
        """

    async def purge(self, *, group: str | None = None) -> int:
        """Delete dead letters (all, or one group's); returns how many."""
