"""Webhooks: deliver events to other companies' servers, signed, retried, never lost.

* :class:`WebhookStore` — endpoints per tenant (URL, event types, generated and rotatable
  secrets), one durable row per delivery, and the log of every attempt (SQLite, PostgreSQL).
* :func:`webhook_router` — subscribes to chosen event types and takes each event in: one
  delivery per matching endpoint.
* :class:`WebhookSender` — POSTs them on the Standard Webhooks shape (``webhook-id``,
  ``webhook-timestamp``, ``webhook-signature``; body ``{"type", "timestamp", "data"}``), with
  the specification's retry schedule, ``Retry-After``, 410 disabling, dead letters,
  per-endpoint concurrency, a circuit breaker, and the :class:`AddressGuard`.
* :class:`WebhookReceiver` — the other side: verify, reject stale requests, process once;
  ``eventbus.webhooks.asgi.webhook_app`` and ``eventbus.webhooks.dependency.webhook_dependency``
  (FastAPI) on top.

Needs ``pip install "eventbus[webhooks]"``. See ``docs/webhooks.md``.
"""

from eventbus.errors import ConfigurationError

try:
    import httpx  # noqa: F401
    import sqlalchemy  # noqa: F401
    import standardwebhooks  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        'eventbus.webhooks needs its extra: pip install "eventbus[webhooks]"'
    ) from exc

from eventbus.webhooks.attempt import AttemptResult
from eventbus.webhooks.breaker import CircuitBreaker
from eventbus.webhooks.deliveries import (
    AttemptRecord,
    DeliveryNotFound,
    DeliveryRecord,
    WebhookDeadLetters,
)
from eventbus.webhooks.endpoints import Endpoint, EndpointNotFound
from eventbus.webhooks.guard import AddressGuard, BlockedAddress
from eventbus.webhooks.intake import webhook_router
from eventbus.webhooks.policy import DEFAULT_DELAYS, RetrySchedule
from eventbus.webhooks.receiver import Admission, ReceivedWebhook, WebhookReceiver
from eventbus.webhooks.sender import AttemptObserver, WebhookSender
from eventbus.webhooks.signing import SignatureError, generate_secret, signature_headers
from eventbus.webhooks.store import WebhookStore

__all__ = [
    "DEFAULT_DELAYS",
    "AddressGuard",
    "Admission",
    "AttemptObserver",
    "AttemptRecord",
    "AttemptResult",
    "BlockedAddress",
    "CircuitBreaker",
    "DeliveryNotFound",
    "DeliveryRecord",
    "Endpoint",
    "EndpointNotFound",
    "ReceivedWebhook",
    "RetrySchedule",
    "SignatureError",
    "WebhookDeadLetters",
    "WebhookReceiver",
    "WebhookSender",
    "WebhookStore",
    "generate_secret",
    "signature_headers",
    "webhook_router",
]
