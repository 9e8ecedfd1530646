"""aiokafka at the adapter's edge: its exceptions, record headers, and the producer seam.

Everything else in the package speaks in these terms: :func:`translate` is the one mapping of
aiokafka's exceptions to :mod:`eventbus.errors` (applied by :data:`ERRORS` around driver
calls, or by :func:`reraise` on the hot paths), :data:`Headers` is what aiokafka takes and
hands out as record headers, and :class:`Producer` is what the consumer and the dead-letter
store need of the broker to put a record on a topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Protocol

from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)

from eventbus.brokers._wire import DriverErrors
from eventbus.errors import BrokerUnavailable, EventBusError, PublishError

__all__ = [
    "ERRORS",
    "Headers",
    "Producer",
    "encode_headers",
    "mapped",
    "now_ms",
    "reraise",
    "translate",
]

Headers = list[tuple[str, "bytes | None"]]
"""Record headers as aiokafka takes and returns them: names with byte (or null) values."""


def translate(exc: Exception, what: str) -> EventBusError | None:
    """The eventbus error, saying what to do, for an aiokafka exception raised during ``what``.

    ``what`` is a verb phrase ("publish to 'x'", "fetch from 'y'"). No answer (a lost
    connection, a timeout) is :class:`BrokerUnavailable`. A refusal
    of a publish is :class:`PublishError`: the record was not sent and the caller decides. A
    refusal of anything else (a join, a fetch, a lookup) is reported as
    :class:`BrokerUnavailable` too, so that the bus retries it as it retries a lost broker.
    Anything that is not aiokafka's passes unchanged (``None``).
    """
    if not isinstance(exc, KafkaError):
        return None
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return BrokerUnavailable(
            f"Kafka did not answer while trying to {what}: {exc}; check that the brokers "
            "in the kafka:// URL are reachable"
        )
    refused = PublishError if what.startswith("publish") else BrokerUnavailable
    return refused(f"Kafka refused to {what}: {exc!r}")


ERRORS = DriverErrors(translate)
"""``with ERRORS("connect"):`` around a driver call maps what aiokafka raises in it."""


def reraise(exc: Exception, what: str) -> NoReturn:
    """Raise the mapped error for ``exc`` (or ``exc`` itself): for hot paths that catch it,
    where building the ``what`` of every call up front would cost on every record."""
    raise mapped(exc, what)


def mapped(exc: BaseException, what: str) -> BaseException:
    """The error :func:`reraise` raises for ``exc`` (caused by it), to set on a future;
    ``exc`` itself when nothing maps it (anything that is not an ``Exception`` included)."""
    error = ERRORS.error(exc, what) if isinstance(exc, Exception) else None
    if error is None:
        return exc
    error.__cause__ = exc  # as ``raise error from exc``
    return error


def encode_headers(headers: Mapping[str, Any]) -> Headers:
    """``headers`` as record headers: text (and anything else) encoded to UTF-8, bytes and
    null values kept. Text that UTF-8 cannot carry (half a surrogate pair) is replaced rather
    than refused, so that a copy or a dead letter can always be written."""
    out: Headers = []
    for name, value in headers.items():
        if value is not None and not isinstance(value, bytes):
            value = str(value).encode("utf-8", "replace")
        out.append((name, value))
    return out


def now_ms() -> int:
    """Wall time in epoch milliseconds: the clock of ``eventbus-due`` (read by other
    processes) and of aiokafka's ``last_poll_timestamp``."""
    return int(time.time() * 1000)


class Producer(Protocol):
    """What the consumer and the dead-letter store need of the broker (its one producer)."""

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> asyncio.Future[Any]:
        """Hand one record to the producer; the future resolves once Kafka has it."""

    async def wait(self, futures: Sequence[asyncio.Future[Any]], topic: str) -> None:
        """Wait for records handed over with :meth:`send`; errors mapped."""

    async def touch(self, topics: Sequence[str]) -> None:
        """Make sure the topics exist (broker auto-creation)."""
