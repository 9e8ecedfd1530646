"""The error taxonomy.

Every error a user can meet derives from :class:`EventBusError`. Handlers raise
:class:`PermanentError` (never retried), :class:`TransientError` (retried) or
:class:`RetryLater` (redelivered after a delay without blocking the queue); the consume
policy in :mod:`eventbus.consume` is the only place that turns them into ack, nack, delayed
redelivery or dead-lettering. Every message says what to do next.
"""

from __future__ import annotations

__all__ = [
    "AggregateNotFound",
    "BrokerUnavailable",
    "BusNotStarted",
    "ConcurrencyError",
    "ConfigurationError",
    "DeadLetterNotFound",
    "DecodeError",
    "EventBusError",
    "HandlerTimeout",
    "NoHandlerError",
    "NonRetryableError",
    "PayloadValidationError",
    "PermanentError",
    "PublishError",
    "RetriesExhausted",
    "RetryLater",
    "TransientError",
]


class EventBusError(Exception):
    """Root of every error raised by eventbus."""


class ConfigurationError(EventBusError):
    """The bus, a subscription or a handler is set up wrongly; raised at start-up or import time."""


class BusNotStarted(ConfigurationError):
    """``publish`` was called before the bus was started (or after it was stopped)."""


class NoHandlerError(ConfigurationError):
    """An event was published that no subscription of a strict bus accepts."""


class PermanentError(EventBusError):
    """Raised by a handler when retrying cannot help: the message goes to the dead-letter queue."""


class TransientError(EventBusError):
    """Raised by a handler when a later attempt may succeed: the retry policy applies."""


class RetryLater(EventBusError):
    """Ask the broker to redeliver this message after ``delay`` seconds.

    The message is handed back to the broker and the original acknowledged, so the queue or
    partition keeps flowing while the message waits.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        if delay < 0:
            raise ValueError(f"RetryLater delay must be >= 0 seconds, got {delay!r}")
        self.delay = float(delay)
        self.reason = reason
        super().__init__(f"redeliver in {self.delay:g}s" + (f": {reason}" if reason else ""))


class DecodeError(PermanentError):
    """Bytes from the broker are not an event this library can read.

    They are dead-lettered exactly as they arrived; inspect them with ``bus.dead_letters``.
    """


class PayloadValidationError(PermanentError):
    """The event's data does not match the handler's model (a pydantic validation failure)."""


class RetriesExhausted(PermanentError):
    """The retry policy gave up: every in-process try and every delayed redelivery failed.

    ``last_error`` (also ``__cause__``) is the error of the last try; the dead-letter record
    reports its type and message. ``attempts`` is the number of deliveries made.
    """

    def __init__(self, last_error: BaseException, attempts: int) -> None:
        self.last_error = last_error
        self.attempts = attempts
        super().__init__(
            f"gave up after {attempts} deliveries; last error: {type(last_error).__name__}: "
            f"{last_error}. Fix the cause, then replay it with bus.dead_letters.replay(id)"
        )


class NonRetryableError(PermanentError):
    """An error the retry policy never retries, wrapped so that it is dead-lettered.

    Raised for a pydantic ``ValidationError`` from a handler and for errors a ``Retry`` or
    ``DeadLetter`` middleware was told are permanent. ``error`` (also ``__cause__``) is the
    original; the dead-letter record reports its type and message.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(
            f"{type(error).__name__} is not retried: {error}. Fix the handler or the event, "
            "then replay it with bus.dead_letters.replay(id)"
        )


class HandlerTimeout(TransientError):
    """A handler ran longer than its ``Timeout`` allows and was cancelled; it will be retried."""


class BrokerUnavailable(TransientError):
    """The broker cannot be reached; the operation may succeed once it is back."""


class PublishError(EventBusError):
    """The broker did not accept a published event; it was not sent and the caller must decide."""


class DeadLetterNotFound(EventBusError, LookupError):
    """``replay`` was given the id of no dead letter (never one, or replayed or purged since)."""

    def __init__(self, dead_letter_id: str, detail: str = "") -> None:
        self.dead_letter_id = dead_letter_id
        super().__init__(
            f"no dead letter with id {dead_letter_id!r}{detail}; list them with "
            "`await bus.dead_letters.list()` and pass a record's `.id`"
        )


class ConcurrencyError(EventBusError):
    """An append to an event stream found it at another version than the one expected.

    ``stream_id``, ``expected`` (the ``expected_version`` passed; None for "any") and
    ``actual`` (the stream's version at the check; None when it could not be read in the
    caller's transaction) say what happened. Nothing of the append was stored: read the
    stream again, decide again, and append with the version read.
    """

    def __init__(
        self, stream_id: str, expected: int | None, actual: int | None, detail: str = ""
    ) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        found = "another append got there first" if actual is None else f"it is at {actual}"
        wanted = "any version" if expected is None else f"version {expected}"
        super().__init__(
            f"stream {stream_id!r} was expected at {wanted}, but {found}"
            + (f" ({detail})" if detail else "")
            + "; nothing was appended. Read the stream again and retry with its version"
        )


class AggregateNotFound(EventBusError, LookupError):
    """``Repository.get`` found no event (and no snapshot) for the aggregate's stream."""

    def __init__(self, kind: str, aggregate_id: str, stream_id: str) -> None:
        self.aggregate_id, self.stream_id = aggregate_id, stream_id
        super().__init__(
            f"no {kind} {aggregate_id!r}: stream {stream_id!r} holds no event. Create it with "
            f"{kind}({aggregate_id!r}), or call get(..., missing_ok=True) for a new one"
        )
