"""Consume-side middleware: the reliability policy, written once for every broker.

Each middleware is a small class whose ``__init__`` takes options and whose
``async __call__(ctx, call_next)`` awaits ``call_next(ctx)`` in the same task. Middleware only
*raise*; the consume policy in :mod:`eventbus.consume` settles every delivery.

Default order (first = outermost): retry → idempotency → handler. An ``EventBus`` created
without ``middleware=`` uses :func:`default_middleware` (``Retry``); ``middleware=()`` means
none (the consume policy still dead-letters permanent failures and redelivers the rest after a
growing delay). ``Idempotency`` needs a store, so it is opt-in::

    bus = EventBus(url, middleware=[*default_middleware(), Idempotency(store)])

The Redis and SQL stores live in their own modules so that their drivers are imported only
when used; ``from eventbus.middleware import RedisIdempotencyStore`` imports them lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.middleware.idempotency import (
    Claim,
    ClaimStatus,
    Idempotency,
    IdempotencyStore,
    MemoryIdempotencyStore,
    TransactionalIdempotencyStore,
)
from eventbus.middleware.retry import Retry, current_try
from eventbus.middleware.timeout import Timeout

if TYPE_CHECKING:
    from eventbus.context import Middleware
    from eventbus.middleware.idempotency_redis import RedisIdempotencyStore
    from eventbus.middleware.idempotency_sql import SqlIdempotencyStore

__all__ = [
    "Claim",
    "ClaimStatus",
    "Idempotency",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "RedisIdempotencyStore",
    "Retry",
    "SqlIdempotencyStore",
    "Timeout",
    "TransactionalIdempotencyStore",
    "current_try",
    "default_middleware",
]

_LAZY = {
    "RedisIdempotencyStore": "eventbus.middleware.idempotency_redis",
    "SqlIdempotencyStore": "eventbus.middleware.idempotency_sql",
}


def default_middleware() -> list[Middleware]:
    """What a bus gets when ``middleware=`` is not given: ``[Retry()]``.

    Three quick tries per delivery, then redeliveries after 1 s, 10 s and 60 s, then the
    dead-letter queue. Build on it: ``[*default_middleware(), Idempotency(store)]``.
    """
    return [Retry()]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
