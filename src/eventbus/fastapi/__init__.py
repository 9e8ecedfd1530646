"""eventbus in FastAPI and Starlette applications (``pip install "eventbus[fastapi]"``).

* :func:`lifespan` — the bus (and an outbox relay) running while the application does;
* :func:`get_bus` — the dependency giving the running bus;
* :class:`Transaction` — the request's database session in a transaction around the endpoint,
  and :attr:`Transaction.publisher`, an :class:`OutboxPublisher` staging events in it;
* :class:`IdempotencyKeyMiddleware` — the HTTP ``Idempotency-Key`` header (a plain ASGI
  middleware: Starlette and other ASGI frameworks too).

See ``docs/fastapi.md``.
"""

from eventbus.errors import ConfigurationError

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        'eventbus.fastapi needs FastAPI: pip install "eventbus[fastapi]"'
    ) from exc

from eventbus.fastapi.app import OutboxPublisher, Transaction, get_bus, lifespan
from eventbus.fastapi.idempotency import REPLAYED_HEADER, IdempotencyKeyMiddleware, parse_key

__all__ = [
    "REPLAYED_HEADER",
    "IdempotencyKeyMiddleware",
    "OutboxPublisher",
    "Transaction",
    "get_bus",
    "lifespan",
    "parse_key",
]
