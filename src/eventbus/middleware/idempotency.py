"""``Idempotency``: run a handler once per (consumer group, event id), surviving failures.

Delivery is at-least-once, so a handler can see an event twice (a redelivery after a lost ack,
a producer retry, a replay). This middleware makes the second time a no-op:

1. *claim* ``(group, event id)`` with a lease before the handler runs;
2. on success, mark it *done* (kept for ``retention`` seconds);
3. on failure, *release* the claim, so the retry that follows can run the handler;
4. a message whose key is done is acked without running the handler; one whose key is
   leased by another consumer right now is redelivered after the lease's remaining time
   (never dropped: if that consumer died, its lease expires and this delivery takes over).

A key is never marked done before the handler succeeded, so a failed attempt cannot make a
later one be skipped. The gap that remains: a process that dies after the handler's effects
but before step 2 runs the handler again once its lease has expired. The strong form —
recording the event id in the handler's own database transaction (the inbox) — closes it.

Stores implement :class:`IdempotencyStore`: :class:`MemoryIdempotencyStore` (one process),
``RedisIdempotencyStore`` (:mod:`eventbus.middleware.idempotency_redis`) and
``SqlIdempotencyStore`` (:mod:`eventbus.middleware.idempotency_sql`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from eventbus.clock import SystemClock
from eventbus.errors import ConfigurationError, RetryLater

if TYPE_CHECKING:
    from eventbus.context import Context, Next
    from eventbus.types import Clock

__all__ = [
    "DUPLICATE_STATE_KEY",
    "Claim",
    "ClaimStatus",
    "Idempotency",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "TransactionalIdempotencyStore",
]

log = logging.getLogger("eventbus.idempotency")

DUPLICATE_STATE_KEY = "eventbus.idempotency.duplicate"
"""``ctx.state`` key set to ``True`` when the delivery was a duplicate and the handler skipped."""


class ClaimStatus(enum.Enum):
    ACQUIRED = "acquired"
    """The caller holds the lease and must run the handler, then ``complete`` or ``release``."""
    DONE = "done"
    """The handler already succeeded for this key (within the retention window)."""
    BUSY = "busy"
    """Another owner holds an unexpired lease; ``retry_after`` is how long it has left."""


@dataclasses.dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    retry_after: float = 0.0
    result: bytes | None = None
    """For ``DONE``: what ``complete(..., result=)`` recorded (``None`` if nothing was)."""


class IdempotencyStore(Protocol):
    """Where claims live. Every operation is atomic with respect to concurrent callers.

    Contract (the shared test suite in ``tests/middleware/test_stores.py`` checks it):

    * ``claim`` takes the key when it is absent, when its lease has expired, or when its done
      marker has outlived its retention; otherwise it reports ``DONE`` or ``BUSY``.
    * ``complete`` marks the key done for ``retention`` seconds whoever holds it (the effect
      has happened; that is what later deliveries must learn), keeping ``result`` (bytes) for
      the ``DONE`` claims that follow (the HTTP Idempotency-Key middleware stores the
      response there).
    * ``release`` deletes the key only while ``owner`` holds its lease, so a slow consumer
      whose lease was taken over cannot release the new owner's claim.
    """

    async def claim(self, group: str, event_id: str, *, owner: str, lease: float) -> Claim: ...

    async def complete(
        self,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None: ...

    async def release(self, group: str, event_id: str, *, owner: str) -> None: ...


@runtime_checkable
class TransactionalIdempotencyStore(IdempotencyStore, Protocol):
    """A store that can mark a key done inside the caller's database transaction, so the
    marker commits (or rolls back) with the work it records (``SqlIdempotencyStore``)."""

    async def complete_in(
        self,
        session: Any,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None: ...


class Idempotency:
    """Skip events a group has already handled; see the module documentation.

    ``lease`` (seconds) must exceed the handler's longest run (use ``Timeout`` to enforce it);
    ``retention`` is how long a done key is remembered, longer than any redelivery or replay
    you want recognised.
    """

    def __init__(
        self, store: IdempotencyStore, *, lease: float = 60.0, retention: float = 7 * 86400.0
    ) -> None:
        if lease <= 0 or retention <= 0:
            raise ConfigurationError("Idempotency lease and retention must be > 0 seconds")
        self.store = store
        self.lease = lease
        self.retention = retention

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        group = ctx.subscription.group or ctx.subscription.name
        event_id = ctx.envelope.id
        owner = uuid.uuid4().hex
        claim = await self.store.claim(group, event_id, owner=owner, lease=self.lease)
        if claim.status is ClaimStatus.DONE:
            ctx.state[DUPLICATE_STATE_KEY] = True
            log.info("%s: %s was handled already; skipped", ctx.subscription.name, event_id)
            return
        if claim.status is ClaimStatus.BUSY:
            raise RetryLater(
                max(claim.retry_after, 0.001),
                reason=f"event {event_id} is being handled elsewhere in group {group!r}",
            )
        try:
            await call_next(ctx)
        except BaseException:
            await self._release(group, event_id, owner)
            raise
        await self._complete(group, event_id, owner)

    async def _release(self, group: str, event_id: str, owner: str) -> None:
        # Shielded: a timeout or shutdown that cancelled the handler must not also stop this.
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release(group, event_id, owner=owner)
            except Exception:
                log.exception(
                    "could not release the claim on %s for %s; a retry waits for its lease "
                    "(%gs) to expire",
                    event_id,
                    group,
                    self.lease,
                )

    async def _complete(self, group: str, event_id: str, owner: str) -> None:
        try:
            await self.store.complete(group, event_id, owner=owner, retention=self.retention)
        except Exception:
            # The handler's effects have happened: acking is right, running them again is not.
            log.exception(
                "handled %s for %s but could not mark it done; a duplicate arriving after "
                "the lease (%gs) would run the handler again",
                event_id,
                group,
                self.lease,
            )

    def __repr__(self) -> str:
        return f"Idempotency({self.store!r}, lease={self.lease:g}, retention={self.retention:g})"


@dataclasses.dataclass
class _Entry:
    done: bool
    owner: str
    until: float
    result: bytes | None = None


class MemoryIdempotencyStore:
    """Claims in this process's memory: for tests and single-process services.

    Time comes from ``clock`` (a ``FakeClock`` in tests). Expired entries are dropped as they
    are met and swept every ``sweep_every`` operations, so memory stays bounded by retention.
    """

    def __init__(self, *, clock: Clock | None = None, sweep_every: int = 1000) -> None:
        self.clock: Clock = clock or SystemClock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._sweep_every = sweep_every
        self._operations = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, group: str, event_id: str, *, owner: str, lease: float) -> Claim:
        now = self._tick()
        entry = self._entries.get((group, event_id))
        if entry is None or entry.until <= now:
            self._entries[(group, event_id)] = _Entry(False, owner, now + lease)
            return Claim(ClaimStatus.ACQUIRED)
        if entry.done:
            return Claim(ClaimStatus.DONE, result=entry.result)
        return Claim(ClaimStatus.BUSY, entry.until - now)

    async def complete(
        self,
        group: str,
        event_id: str,
        *,
        owner: str,
        retention: float,
        result: bytes | None = None,
    ) -> None:
        now = self._tick()
        self._entries[(group, event_id)] = _Entry(True, owner, now + retention, result)

    async def release(self, group: str, event_id: str, *, owner: str) -> None:
        self._tick()
        entry = self._entries.get((group, event_id))
        if entry is not None and not entry.done and entry.owner == owner:
            del self._entries[(group, event_id)]

    def _tick(self) -> float:
        now = self.clock.now()
        self._operations += 1
        if self._operations % self._sweep_every == 0:
            expired = [key for key, entry in self._entries.items() if entry.until <= now]
            for key in expired:
                del self._entries[key]
        return now

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore({len(self._entries)} keys)"
