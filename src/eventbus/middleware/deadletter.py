"""``DeadLetter``: decides which failures are permanent and records when failing began.

The bus settles every delivery (:mod:`eventbus.consume` is the only place that acks, nacks,
redelivers or dead-letters); this middleware prepares what the bus sees:

* a pydantic ``ValidationError`` raised by the handler, or an error listed in ``permanent=`` /
  matched by ``is_permanent``, becomes :class:`~eventbus.errors.NonRetryableError`, so the bus
  dead-letters it instead of requeueing it (even with no ``Retry`` in the chain);
* on the first failure of a message it stores the time in ``delivery.metadata``
  (:data:`~eventbus.deadletters.FIRST_FAILURE_AT`), which the broker carries with each
  redelivery, so the dead-letter record finally says when the message started failing.

The record itself — destination, group, handler, error type and message, traceback excerpt,
attempts, first and last failure time, event id and traceparent, the original bytes — is
built by :func:`eventbus.deadletters.describe_failure` when the bus dead-letters.
It sits outside ``Retry`` (default order: dead-letter → retry → idempotency → handler).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from eventbus.deadletters import FIRST_FAILURE_AT
from eventbus.errors import NonRetryableError, PermanentError, RetryLater
from eventbus.middleware.retry import is_permanent

if TYPE_CHECKING:
    from eventbus.context import Context
    from eventbus.types import Next

__all__ = ["DeadLetter"]


class DeadLetter:
    """Classify permanent failures and stamp the first-failure time; see the module docs.

    ``now`` returns the current UTC time (for tests).
    """

    def __init__(
        self,
        *,
        permanent: Sequence[type[BaseException]] = (),
        is_permanent: Callable[[BaseException], bool] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.permanent = tuple(permanent)
        self.is_permanent = is_permanent
        self._now = now or _utcnow

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        try:
            await call_next(ctx)
        except PermanentError:
            raise
        except RetryLater as exc:
            if exc.__cause__ is not None:  # Retry gave this delivery up; a bare one means "not yet"
                self._stamp_first_failure(ctx)
            raise
        except Exception as exc:
            if is_permanent(exc, self.permanent, self.is_permanent):
                raise NonRetryableError(exc) from exc
            self._stamp_first_failure(ctx)
            raise

    def _stamp_first_failure(self, ctx: Context) -> None:
        # getattr: adapters written before Delivery.metadata existed simply lose this detail.
        metadata = getattr(ctx.delivery, "metadata", None)
        if metadata is not None and FIRST_FAILURE_AT not in metadata:
            metadata[FIRST_FAILURE_AT] = self._now().isoformat()

    def __repr__(self) -> str:
        return f"DeadLetter(permanent={self.permanent!r})"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
