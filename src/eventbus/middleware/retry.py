"""``Retry``: quick in-process tries with backoff, then delayed redeliveries, then give up.

For one delivery the handler is tried up to ``tries`` times in this process, with exponential
backoff and jitter between tries (short waits: the consumer holds the message meanwhile). If
every try fails with a retryable error, the message is handed back to the broker with
:class:`~eventbus.errors.RetryLater` for the next of ``delays`` (``1 s, 10 s, 60 s`` by
default), so the queue or partition keeps flowing while it waits. When the delivery attempt
is past the last delay, :class:`~eventbus.errors.RetriesExhausted` is raised and the bus
dead-letters the message.

Counting: ``ctx.attempt`` is the *delivery* attempt, carried by the broker across redeliveries
and processes; the in-process try within one delivery is :func:`current_try`. The worst case
is ``tries * (1 + len(delays))`` handler runs.

Classification (:meth:`Retry.retryable`): :class:`~eventbus.errors.TransientError` is always
retried; :class:`~eventbus.errors.PermanentError`, pydantic ``ValidationError``, the types in
``permanent=`` and errors for which ``is_permanent(exc)`` is true are never retried and are
dead-lettered at once (wrapped in :class:`~eventbus.errors.NonRetryableError` unless they are
already a ``PermanentError``); everything else is retried. A ``RetryLater`` raised by the
handler is passed to the bus unchanged: it is the handler saying "not yet", not a failure.

A subscription overrides the bus's policy with ``@router.subscribe(..., retry=Retry(...))``:
that ``Retry`` takes the place of the bus's in the subscription's chain, or is added to a
chain that has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from eventbus.errors import (
    ConfigurationError,
    NonRetryableError,
    PermanentError,
    RetriesExhausted,
    RetryLater,
    TransientError,
)
from eventbus.logfields import log_fields

if TYPE_CHECKING:
    from eventbus.context import Context, Next
    from eventbus.types import Clock

__all__ = ["TRY_STATE_KEY", "Retry", "current_try", "is_permanent"]

log = logging.getLogger("eventbus.retry")

TRY_STATE_KEY = "eventbus.retry.try"
"""``ctx.state`` key holding the in-process try number (1-based) within the current delivery."""


def current_try(ctx: Context) -> int:
    """The in-process try of the current delivery: 1, then 2, … (1 when no ``Retry`` runs).

    Unlike ``ctx.attempt`` (the delivery attempt) it starts at 1 again on every redelivery.
    """
    value = ctx.state.get(TRY_STATE_KEY, 1)
    return value if isinstance(value, int) else 1


def is_permanent(
    exc: BaseException,
    permanent: tuple[type[BaseException], ...] = (),
    predicate: Callable[[BaseException], bool] | None = None,
) -> bool:
    """True for errors that must never be retried (see the module documentation)."""
    if isinstance(exc, TransientError):
        return False
    if isinstance(exc, (PermanentError, ValidationError, *permanent)):
        return True
    return predicate is not None and predicate(exc)


class Retry:
    """The retry policy, as a middleware; see the module documentation.

    ``tries`` in-process tries per delivery (>= 1) with backoff ``backoff * 2**n`` seconds,
    capped at ``max_backoff``, plus up to ``jitter`` seconds at random; then one delayed
    redelivery per entry of ``delays``; then give up. ``permanent`` and ``is_permanent`` add
    errors that are never retried. ``clock`` defaults to the bus's (``ctx.clock``).
    """

    def __init__(
        self,
        *,
        tries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        jitter: float = 0.1,
        delays: Sequence[float] = (1.0, 10.0, 60.0),
        permanent: Sequence[type[BaseException]] = (),
        is_permanent: Callable[[BaseException], bool] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ConfigurationError(f"Retry(tries=...) must be an integer >= 1, got {tries!r}")
        if min(backoff, max_backoff, jitter) < 0 or any(d < 0 for d in delays):
            raise ConfigurationError("Retry backoff, max_backoff, jitter and delays must be >= 0")
        self.tries = tries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.delays = tuple(float(d) for d in delays)
        self.permanent = tuple(permanent)
        self.is_permanent = is_permanent
        self.clock = clock

    @property
    def max_deliveries(self) -> int:
        """Deliveries before giving up: the first one plus one per delay."""
        return 1 + len(self.delays)

    def retryable(self, exc: BaseException) -> bool:
        """Whether a try that raised ``exc`` may be tried again."""
        if not isinstance(exc, Exception) or isinstance(exc, RetryLater):
            return False  # cancellation and RetryLater are not failures to retry here
        return not is_permanent(exc, self.permanent, self.is_permanent)

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        """Run ``call_next`` under this policy."""
        ctx.state[TRY_STATE_KEY] = 1
        try:  # the common case, a first try that succeeds, costs no tenacity machinery
            await call_next(ctx)
            return
        except (PermanentError, RetryLater):
            raise
        except Exception as exc:
            first_error = exc
        await self.after_first_try(ctx, call_next, first_error)

    async def after_first_try(self, ctx: Context, call_next: Next, first_error: Exception) -> None:
        """Tries 2..``tries`` under tenacity, after a first try of ``call_next`` that raised
        ``first_error`` (not a ``PermanentError`` or ``RetryLater``); try 1 is replayed from it.
        Returns when a try succeeds; raises as :meth:`__call__` does when none does."""
        clock = self.clock or ctx.clock
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.tries),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff)
            + wait_random(0, self.jitter),
            retry=retry_if_exception(self.retryable),
            sleep=clock.sleep,
            before_sleep=self._log_retry(ctx),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    ctx.state[TRY_STATE_KEY] = number
                    if number == 1:
                        raise first_error
                    await call_next(ctx)
        except (PermanentError, RetryLater):
            raise
        except Exception as exc:
            if not self.retryable(exc):
                raise NonRetryableError(exc) from exc
            raise self._after_failed_delivery(ctx, exc) from exc

    def _after_failed_delivery(self, ctx: Context, exc: Exception) -> RetryLater | RetriesExhausted:
        """Every try of this delivery failed: redeliver after the next delay, or give up."""
        if ctx.attempt <= len(self.delays):
            delay = self.delays[max(ctx.attempt, 1) - 1]
            log.info(
                "%s failed on %s (delivery %d of %d, %s); redelivering in %gs",
                ctx.subscription.name,
                ctx.envelope.id,
                ctx.attempt,
                self.max_deliveries,
                type(exc).__name__,
                delay,
                extra=_fields(ctx, "redelivering"),
            )
            return RetryLater(delay, reason=f"{type(exc).__name__}: {exc}")
        return RetriesExhausted(exc, attempts=ctx.attempt)

    def _log_retry(self, ctx: Context) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.info(
                "%s failed on %s (delivery %d, try %d: %r); trying again in %.3gs",
                ctx.subscription.name,
                ctx.envelope.id,
                ctx.attempt,
                state.attempt_number,
                error,
                state.upcoming_sleep,
                extra=_fields(ctx, "retrying"),
            )

        return before_sleep

    def __repr__(self) -> str:
        return (
            f"Retry(tries={self.tries}, backoff={self.backoff:g}, max_backoff={self.max_backoff:g},"
            f" jitter={self.jitter:g}, delays={self.delays})"
        )


def _fields(ctx: Context, outcome: str) -> dict[str, object]:
    """The log fields of a failed try (:mod:`eventbus.logfields`)."""
    delivery = ctx.delivery
    return log_fields(
        outcome,
        envelope=ctx.envelope,
        attempt=ctx.attempt,
        destination=delivery.destination if delivery is not None else None,
        subscription=ctx.subscription,
    )
