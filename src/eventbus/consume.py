"""The consume policy: how one delivery is run through its chain and settled.

This module is the only place with delivery *policy*. For each delivery the middleware chain
and handler run, and then:

* the chain returns — ack;
* it raises :class:`~eventbus.errors.RetryLater` — the broker redelivers after the delay
  (without blocking other messages) and the original is acked;
* it raises :class:`~eventbus.errors.PermanentError` (payload validation failures and
  exhausted retries included) — the message goes to the dead-letter queue with provenance,
  and is acked;
* it raises anything else (no middleware decided) — redelivered after a minimum delay that
  doubles with each attempt (``redelivery_delay``, at most :data:`MAX_REDELIVERY_DELAY`), so a
  failing handler never loops hot, whatever the middleware;
* the bytes could not be decoded — dead-lettered exactly as they arrived.

No handler failure, bad message or settle error ends a consumer loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from eventbus.chain import RetryFirst
from eventbus.clock import SystemClock
from eventbus.context import Context, Next, Publisher, current_envelope
from eventbus.deadletters import (
    FIRST_FAILURE_AT,
    MAX_ERROR_MESSAGE,
    MAX_TRACEBACK,
    DeadLetterRecord,
)
from eventbus.errors import (
    DecodeError,
    NonRetryableError,
    PermanentError,
    RetriesExhausted,
    RetryLater,
)
from eventbus.logfields import delivery_fields
from eventbus.middleware.retry import TRY_STATE_KEY, Retry
from eventbus.router import Subscription
from eventbus.types import Clock, Delivery, SubscriptionView, UndecodableObserver

__all__ = [
    "MAX_REDELIVERY_DELAY",
    "SETTLE_RETRY_PAUSES",
    "SubscriptionHandler",
    "describe_failure",
    "release",
    "settle",
    "settle_outcome",
]

log = logging.getLogger("eventbus")

_SYSTEM_CLOCK = SystemClock()
MAX_REDELIVERY_DELAY = 60.0
"""The longest wait before redelivering an error that no middleware decided about."""


class SubscriptionHandler:
    """Runs one subscription's deliveries through its chain and settles each by the policy.

    ``active``, when given, holds the tasks running a delivery at this moment (what
    ``EventBus.drain`` looks at to tell a bus waiting on a fake clock from a busy one).
    ``clock`` paces the retries of a settle that failed.
    """

    __slots__ = ("_bus", "_chain", "_clock", "_delay", "_observers", "_retry", "_sub", "run")

    def __init__(
        self,
        bus: Publisher,
        sub: Subscription,
        chain: Next,
        redelivery_delay: float,
        clock: Clock,
        active: set[asyncio.Task[Any]] | None = None,
        observers: Sequence[UndecodableObserver] = (),
    ) -> None:
        self._bus, self._sub, self._chain = bus, sub, chain
        self._retry: Retry | None = None
        if isinstance(chain, RetryFirst):  # run below without the Retry link (see there)
            self._retry, self._chain = chain.retry, chain.inner
        self._observers = tuple(observers)
        self._delay = redelivery_delay
        self._clock = clock
        self.run: Callable[[Delivery], Awaitable[None]] = (
            self._handle if active is None else functools.partial(self._tracked, active)
        )
        """Handle one delivery (what a runner calls; ``handler(delivery)`` does the same)."""

    def __call__(self, delivery: Delivery) -> Awaitable[None]:
        return self.run(delivery)

    async def _tracked(self, active: set[asyncio.Task[Any]], delivery: Delivery) -> None:
        task = asyncio.current_task()
        if task is not None:
            active.add(task)
        try:
            await self._handle(delivery)
        finally:
            if task is not None:
                active.discard(task)

    async def _handle(self, delivery: Delivery) -> None:
        """Run the chain and settle by its outcome; one coroutine for the common case."""
        sub, envelope, clock = self._sub, delivery.envelope, self._clock
        try:
            if envelope is None or not sub.accepts(envelope.type):
                await self._settle_unhandled(delivery)
                return
            # Positional: a class called with keywords builds a dict of them first.
            ctx = Context(envelope, sub, self._bus, delivery, delivery.attempt, clock)
            token = current_envelope.set(envelope)
            try:
                retry = self._retry
                if retry is None:
                    await self._chain(ctx)
                else:  # Retry.__call__ written out: its first try here, the rest in it
                    ctx.state[TRY_STATE_KEY] = 1
                    try:
                        await self._chain(ctx)
                    except (PermanentError, RetryLater):
                        raise
                    except Exception as exc:
                        await retry.after_first_try(ctx, self._chain, exc)
            except asyncio.CancelledError:
                await settle(delivery, delivery.nack, clock, retries=False, subscription=sub)
                raise
            except Exception as exc:
                await self._settle_failure(delivery, exc)
            else:
                try:
                    await delivery.ack()
                except Exception as exc:
                    await _settle_again(delivery, delivery.ack, exc, clock, sub)
            finally:
                current_envelope.reset(token)
        except Exception:  # a bug of ours must not lose the message or end the consumer
            await self._unexpected(delivery)

    async def _settle_unhandled(self, delivery: Delivery) -> None:
        """Undecodable: dead-lettered as it arrived; another type: acked, not handled here."""
        if delivery.envelope is not None:
            await self._settle(delivery, delivery.ack)  # another type on this destination
            return
        error = delivery.decode_error or DecodeError("undecodable message")
        self._observe_undecodable(delivery, error)
        await self._dead_letter(delivery, error, "undecodable")

    async def _unexpected(self, delivery: Delivery) -> None:
        log.exception(
            "%s: handling a delivery failed unexpectedly; handing it back",
            self._sub.name,
            extra=delivery_fields(delivery, self._sub, "released"),
        )
        await self._settle(delivery, delivery.release)

    def _observe_undecodable(self, delivery: Delivery, error: DecodeError) -> None:
        for observer in self._observers:
            try:
                observer.undecodable(self._sub, delivery, error)
            except Exception:  # telemetry must never keep a message from its dead-letter queue
                log.exception("%s: %r failed on an undecodable message", self._sub.name, observer)

    async def _settle_failure(self, delivery: Delivery, exc: Exception) -> None:
        """Settle a delivery whose chain raised ``exc``, as :func:`settle_outcome` says."""
        outcome = settle_outcome(exc)
        if outcome == "retry_later" and isinstance(exc, RetryLater):
            if exc.__cause__ is not None:  # a policy gave this delivery up; bare means "not yet"
                _stamp_first_failure(delivery)
            await self._settle(delivery, functools.partial(delivery.retry_later, exc.delay))
        elif outcome == "dead_letter":  # the handler's own validation: retrying cannot help
            reason = exc if isinstance(exc, PermanentError) else NonRetryableError(exc)
            await self._dead_letter(delivery, reason, "permanent failure")
        else:
            _stamp_first_failure(delivery)
            await self._redeliver_later(delivery, exc)

    async def _redeliver_later(self, delivery: Delivery, exc: Exception) -> None:
        """An error no middleware decided about: back to the broker after a growing delay."""
        delay = min(self._delay * 2 ** min(delivery.attempt - 1, 16), MAX_REDELIVERY_DELAY)
        log.warning(
            "%s failed on %s (delivery %d); redelivering in %gs",
            self._sub.name,
            delivery.envelope.id if delivery.envelope else "message",
            delivery.attempt,
            delay,
            exc_info=exc,
            extra=delivery_fields(delivery, self._sub, "redelivering"),
        )
        await self._settle(delivery, functools.partial(delivery.retry_later, delay))

    async def _dead_letter(self, delivery: Delivery, exc: BaseException, reason: str) -> None:
        sub = self._sub
        record = describe_failure(
            delivery, group=sub.group or "", subscription=sub.name, reason=reason, exc=exc
        )
        log.error(
            "%s: dead-lettered %s from %s: %s",
            sub.name,
            record.event_id or "message",
            delivery.destination,
            exc,
            extra=delivery_fields(delivery, sub, "dead-lettered"),
        )
        await self._settle(delivery, functools.partial(delivery.dead_letter, record))

    async def _settle(self, delivery: Delivery, operation: Callable[[], Awaitable[None]]) -> None:
        await settle(delivery, operation, self._clock, subscription=self._sub)

    async def release_unstarted(self, delivery: Delivery) -> None:
        """Hand back a delivery that was taken but never started (see :func:`release`)."""
        await release(delivery, self._sub)


def settle_outcome(exc: BaseException) -> str:
    """How the policy settles a delivery whose chain raised ``exc``: ``retry_later`` (a
    middleware asked for it), ``dead_letter`` (a permanent failure, the handler's validation
    included), ``nack`` (cancelled) or ``redeliver`` (an error no middleware decided about).
    Telemetry reports the same word."""
    if isinstance(exc, RetryLater):
        return "retry_later"
    if isinstance(exc, (PermanentError, ValidationError)):
        return "dead_letter"
    if isinstance(exc, asyncio.CancelledError):
        return "nack"
    return "redeliver"


def _stamp_first_failure(delivery: Delivery) -> None:
    """Record when the message first failed; the broker carries it to every redelivery."""
    if FIRST_FAILURE_AT not in delivery.metadata:
        delivery.metadata[FIRST_FAILURE_AT] = datetime.now(timezone.utc).isoformat()


def describe_failure(
    delivery: Delivery,
    *,
    group: str,
    subscription: str,
    reason: str,
    exc: BaseException | None = None,
) -> DeadLetterRecord:
    """The dead-letter record for ``delivery``, which failed with ``exc`` (if any).

    For :class:`~eventbus.errors.RetriesExhausted` and
    :class:`~eventbus.errors.NonRetryableError` the record names the error they wrap (its type
    and message) and says why it was not retried. ``first_failure_at`` is the time carried in
    ``delivery.metadata`` (:data:`~eventbus.deadletters.FIRST_FAILURE_AT`), else now. The error
    message and traceback are cut here, once, to what every adapter stores.
    """
    now = datetime.now(timezone.utc)
    envelope = delivery.envelope
    reason, shown = _reason(reason, exc)
    excerpt = ""
    if exc is not None:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        excerpt = _clean("".join(lines).rstrip("\n"))[-MAX_TRACEBACK:]
    return DeadLetterRecord(
        id=str(uuid.uuid4()),
        destination=delivery.destination,
        group=group,
        subscription=subscription,
        reason=reason,
        error_type=f"{type(shown).__module__}.{type(shown).__qualname__}" if shown else "",
        error_message=_clean(str(shown))[:MAX_ERROR_MESSAGE] if shown else reason,
        attempts=delivery.attempt,
        headers=dict(delivery.headers),
        body=delivery.body,
        event_id=envelope.id if envelope else None,
        event_type=envelope.type if envelope else None,
        traceparent=envelope.traceparent if envelope else None,
        traceback=excerpt,
        first_failure_at=_carried_first_failure(delivery) or now,
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
    value = delivery.metadata.get(FIRST_FAILURE_AT)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # written by something else; the record falls back to "now"
        return None


async def release(delivery: Delivery, subscription: SubscriptionView | None = None) -> None:
    """Hand a delivery that was taken but never started back to the broker, uncounted."""
    await settle(
        delivery, delivery.release, _SYSTEM_CLOCK, retries=False, subscription=subscription
    )


SETTLE_RETRY_PAUSES = (0.05, 0.25, 1.0)
"""Waits between the tries of a settle that failed; after the last, the delivery is given back."""


async def settle(
    delivery: Delivery,
    operation: Callable[[], Awaitable[None]],
    clock: Clock,
    *,
    retries: bool = True,
    subscription: SubscriptionView | None = None,
) -> None:
    """Run ``operation`` (an ack, a redelivery, a dead-lettering…) on ``delivery``, so that a
    failure never leaves the message stuck: it is tried again, then handed back.
    ``subscription`` names the delivery's subscription in the log records of failures."""
    try:
        await operation()
    except Exception as exc:
        if not retries:
            _could_not(delivery, exc, subscription)
            return
        await _settle_again(delivery, operation, exc, clock, subscription)


async def _settle_again(
    delivery: Delivery,
    operation: Callable[[], Awaitable[None]],
    error: Exception,
    clock: Clock,
    subscription: SubscriptionView | None,
) -> None:
    """Try a failed settle again with backoff; if it keeps failing, hand the delivery back."""
    for pause in SETTLE_RETRY_PAUSES:
        log.warning(
            "could not settle %s from %s (%s); trying again in %gs",
            _name(delivery),
            delivery.destination,
            _short(error),
            pause,
            extra=delivery_fields(delivery, subscription, "settle-retrying"),
        )
        await clock.sleep(pause)
        try:
            await operation()
            return
        except Exception as exc:
            error = exc
    log.error(
        "could not settle %s from %s after %d tries (%s); handing it back for redelivery",
        _name(delivery),
        delivery.destination,
        1 + len(SETTLE_RETRY_PAUSES),
        _short(error),
        extra=delivery_fields(delivery, subscription, "released"),
    )
    try:
        await delivery.release()
    except Exception as exc:
        _could_not(delivery, exc, subscription)


def _could_not(
    delivery: Delivery, exc: BaseException, subscription: SubscriptionView | None
) -> None:
    log.error(
        "could not hand %s from %s back (%s); the broker redelivers it when the consumer "
        "reconnects",
        _name(delivery),
        delivery.destination,
        _short(exc),
        extra=delivery_fields(delivery, subscription, "not-settled"),
    )


def _name(delivery: Delivery) -> str:
    envelope = delivery.envelope
    return f"event {envelope.id}" if envelope is not None else "a message"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc!s:.200}"
