"""``WebhookReceiver``: the receiving side — verify, reject stale requests, process once.

1. **Verify** the signature against the *raw* request bytes (never a re-serialised JSON: a
   different key order or spacing is a different signature), in constant time, against every
   secret given (two during the sender's rotation).
2. **Reject old timestamps**: a request signed more than ``tolerance`` seconds (5 minutes by
   default) from now, either way, is refused; a captured request cannot be replayed later.
   The sender signs each attempt afresh, so its retries are not refused for their age.
3. **Deduplicate by ``webhook-id``** through an idempotency store
   (``eventbus.middleware.IdempotencyStore``: memory, Redis or SQL): the id is claimed before
   the handler runs, marked done when it succeeds, released when it fails (so the sender's
   retry runs it again), and remembered for ``retention`` seconds.

**Why the retention must outlast the sender's retry horizon.** The sender tries again for
about three days (the Standard Webhooks schedule). A receiver that processed a request whose
answer was lost sees the same ``webhook-id`` again at any point in that window; if it forgot
the id sooner it processes the event twice. ``retention`` therefore defaults to 7 days and
must be at least ``horizon`` (the default schedule's, about 83 hours with jitter): a shorter
one fails at construction. Manual replays can come later still — keep ids longer if your
operators replay old deliveries.

The helpers on top: :func:`eventbus.webhooks.asgi.webhook_app` (a plain ASGI app) and
:func:`eventbus.webhooks.dependency.webhook_dependency` (a FastAPI dependency).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from eventbus.errors import ConfigurationError
from eventbus.middleware.idempotency import ClaimStatus, IdempotencyStore
from eventbus.webhooks.policy import RetrySchedule
from eventbus.webhooks.signing import SignatureError, check_secret, verify

__all__ = ["DEFAULT_RETENTION", "Admission", "ReceivedWebhook", "WebhookReceiver"]

DEFAULT_TOLERANCE = 300.0
DEFAULT_RETENTION = 7 * 86400.0


@dataclasses.dataclass(frozen=True)
class ReceivedWebhook:
    """A verified request: its id, signed time, and the parsed body."""

    id: str
    timestamp: int
    type: str | None
    data: Any
    body: bytes = dataclasses.field(repr=False)


class Admission(str, enum.Enum):
    FIRST = "first"
    """Run the handler, then :meth:`WebhookReceiver.done` (or ``failed``)."""
    DUPLICATE = "duplicate"
    """Processed already: answer 2xx without running the handler."""
    BUSY = "busy"
    """Being processed right now elsewhere: answer 503, the sender tries again."""


class WebhookReceiver:
    """See the module documentation. ``secrets``: the endpoint's secret (``whsec_…``), or
    several during a rotation. ``store=None`` verifies without deduplicating. ``group``
    separates the ids of several receivers sharing a store. ``lease`` bounds the handler's
    run (a crash frees the id after it)."""

    def __init__(
        self,
        secrets: str | Sequence[str],
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        store: IdempotencyStore | None = None,
        group: str = "webhooks",
        retention: float = DEFAULT_RETENTION,
        horizon: float | None = None,
        lease: float = 60.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        listed = [secrets] if isinstance(secrets, str) else list(secrets)
        if not listed:
            raise ConfigurationError("WebhookReceiver needs the endpoint's secret (whsec_...)")
        self.secrets = [check_secret(s) for s in listed]
        horizon = RetrySchedule().horizon if horizon is None else horizon
        if tolerance <= 0 or lease <= 0:
            raise ConfigurationError("WebhookReceiver tolerance and lease must be > 0 seconds")
        if store is not None and retention < horizon:
            raise ConfigurationError(
                f"WebhookReceiver(retention={retention:g}) forgets a webhook-id before the "
                f"sender stops retrying it ({horizon:.0f}s): a late retry would be processed "
                f"twice; give retention >= {horizon:.0f} (or the horizon= of your sender's "
                "schedule)"
            )
        self.tolerance, self.store, self.group = tolerance, store, group
        self.retention, self.lease, self.now = retention, lease, now

    def __repr__(self) -> str:  # never the secrets
        return f"WebhookReceiver({len(self.secrets)} secret(s), tolerance={self.tolerance:g})"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> ReceivedWebhook:
        """The verified request; :class:`~eventbus.webhooks.signing.SignatureError` when the
        headers, the timestamp or the signature do not hold."""
        msg_id, timestamp = verify(
            self.secrets, body, headers, now=self.now(), tolerance=self.tolerance
        )
        try:
            document = json.loads(body)
        except ValueError:
            raise SignatureError("the signed body is not JSON") from None
        kind = document.get("type") if isinstance(document, dict) else None
        data = document.get("data") if isinstance(document, dict) else document
        return ReceivedWebhook(msg_id, timestamp, kind, data, body)

    async def admit(self, webhook: ReceivedWebhook, owner: str) -> tuple[Admission, float]:
        """Claim the webhook's id for ``owner``: (what to do, seconds to wait when busy)."""
        if self.store is None:
            return Admission.FIRST, 0.0
        claim = await self.store.claim(self.group, webhook.id, owner=owner, lease=self.lease)
        if claim.status is ClaimStatus.DONE:
            return Admission.DUPLICATE, 0.0
        if claim.status is ClaimStatus.BUSY:
            return Admission.BUSY, claim.retry_after
        return Admission.FIRST, 0.0

    async def done(self, webhook: ReceivedWebhook, owner: str) -> None:
        if self.store is not None:
            await self.store.complete(self.group, webhook.id, owner=owner, retention=self.retention)

    async def failed(self, webhook: ReceivedWebhook, owner: str) -> None:
        if self.store is not None:
            await self.store.release(self.group, webhook.id, owner=owner)

    async def handle(
        self,
        body: bytes,
        headers: Mapping[str, str],
        handler: Callable[[ReceivedWebhook], Awaitable[None]],
    ) -> tuple[Admission, ReceivedWebhook]:
        """Verify, then run ``handler`` once per ``webhook-id``: (what happened, the webhook).
        A handler that raises releases the id and the error propagates (answer 5xx)."""
        webhook = self.verify(body, headers)
        owner = uuid.uuid4().hex
        admission, _ = await self.admit(webhook, owner)
        if admission is not Admission.FIRST:
            return admission, webhook
        try:
            await handler(webhook)
        except BaseException:
            await self.failed(webhook, owner)
            raise
        await self.done(webhook, owner)
        return admission, webhook
