"""``WebhookSender``: attempts every due delivery, each endpoint in its own lane.

A round asks which enabled endpoints have deliveries due, and for each one leases only as many
rows as it may have in flight — ``concurrency`` while its circuit is closed, one probe when
half-open, none while open (see :mod:`eventbus.webhooks.breaker`) — and starts one task per
row. A task POSTs (:mod:`eventbus.webhooks.attempt`), then settles in one transaction: the
row's new state, one line in the delivery log, and for a 410 the endpoint disabled. Finishing
wakes the loop, which leases that endpoint's next row. So a slow or dead endpoint holds at most
``concurrency`` attempts of its own and never a slot, a lease or a round of any other. An
idle sender looks again every ``poll_interval`` seconds, or at once when a commit signals it
(PostgreSQL ``NOTIFY``, through the outbox relay's :class:`~eventbus.outbox.wakeup.Wakeup`).

**Nothing is lost.** The row is the retry state: a sender killed between attempts leaves rows
``pending`` with their next time, one killed during an attempt leaves a lease that runs out
after ``lease`` seconds; the next sender carries on from there. The cost is at-least-once: an
attempt whose answer was lost in the crash is made again, with the same ``webhook-id``, which
is what receivers deduplicate on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from eventbus.errors import ConfigurationError
from eventbus.lifecycle import Lifecycle
from eventbus.outbox.wakeup import Wakeup
from eventbus.redact import redact_url
from eventbus.webhooks.attempt import DEFAULT_TIMEOUT, AttemptResult, Poster
from eventbus.webhooks.breaker import CircuitBreaker
from eventbus.webhooks.claims import Claims
from eventbus.webhooks.endpoints import Endpoint, endpoint_of
from eventbus.webhooks.guard import AddressGuard
from eventbus.webhooks.policy import Outcome, RetrySchedule, Verdict
from eventbus.webhooks.store import WebhookStore

__all__ = ["AttemptObserver", "WebhookSender"]

log = logging.getLogger("eventbus.webhooks")

PRUNE_EVERY = 3600.0
"""Seconds between two sweeps of delivered rows past the sender's ``retention``."""


class AttemptObserver(Protocol):
    """Told about every attempt (``eventbus.webhooks.telemetry.WebhookTelemetry`` records
    spans and metrics from it)."""

    def started(
        self, endpoint: Endpoint, row: Any, attempt: int
    ) -> Callable[[AttemptResult, str], None]:
        """Called as an attempt starts; the returned function is called with its result and
        the delivery's new state (``pending``, ``delivered``, ``dead``)."""

    def lag(self, per_endpoint: dict[str, float]) -> None:
        """Seconds since the oldest pending delivery of each endpoint was taken in."""


class WebhookSender(Lifecycle):
    """Delivers what ``store`` holds; see the module documentation.

    ``guard`` defaults to ``AddressGuard()``: no loopback, private, link-local or metadata
    addresses. ``timeout`` bounds a whole attempt; ``lease`` (default ``timeout + 60``) must
    exceed it. ``poll_interval`` is how often an idle sender looks for newly due rows (taking
    an event in through :func:`~eventbus.webhooks.webhook_router` with ``sender=`` wakes it).
    Delivered rows and log lines are kept ``retention`` seconds (30 days), then deleted; dead
    rows stay until purged.
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        guard: AddressGuard | None = None,
        schedule: RetrySchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = 4,
        breaker: CircuitBreaker | None = None,
        lease: float | None = None,
        poll_interval: float = 1.0,
        client: httpx.AsyncClient | None = None,
        observer: AttemptObserver | None = None,
        lag_interval: float = 15.0,
        retention: float = 30 * 86400.0,
    ) -> None:
        lease = timeout + 60.0 if lease is None else lease
        if not (timeout > 0 and poll_interval > 0 and lease > timeout and retention > 0):
            raise ConfigurationError(
                "WebhookSender needs timeout > 0, poll_interval > 0, retention > 0 and "
                "lease > timeout (a lease shorter than an attempt lets another sender make it too)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("WebhookSender(concurrency=...) is an integer >= 1")
        self.store, self.now = store, store.now
        self.schedule = schedule or RetrySchedule()
        self.concurrency, self.lease, self.poll_interval = concurrency, lease, poll_interval
        self.breaker = breaker or CircuitBreaker()
        self.observer, self.lag_interval, self.retention = observer, lag_interval, retention
        self.poster = Poster(
            guard=guard or AddressGuard(), timeout=timeout, client=client, now=store.now
        )
        self._sql = Claims(store.tables, dialect=store.engine.dialect.name)
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = Wakeup(store.engine, store.channel)
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._lag_at = self._pruned_at = -float("inf")
        self.attempts = 0
        """Attempts finished by this sender (a health check can watch it grow)."""
        self.rounds = 0
        """Background rounds finished, successful or not."""

    # ---------------------------------------------------------------- running
    async def run_once(self) -> int:
        """Attempt everything due now, wait for those attempts, and return how many were
        made (due retries included; later ones are left for a later call)."""
        made = self.attempts
        while True:
            quiet = not self._tasks
            started = await self._round()
            if started:
                continue
            if not self._tasks:
                if quiet:  # no attempt ran during that round: what it sampled still holds
                    return self.attempts - made
                continue  # attempts ended mid-round: one more, so the lag gauge sees them
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    def signal(self) -> None:
        """Look for due deliveries now (an event was just taken in)."""
        self._wakeup.signal()

    async def start(self) -> None:
        """Run in the background until :meth:`stop`; on PostgreSQL, a commit that takes an
        event in (or replays a delivery) wakes it at once, from any process."""
        if self._loop is None:
            await self._wakeup.start()
            self._stopping.clear()
            self._loop = asyncio.get_running_loop().create_task(
                self._run(), name="eventbus:webhook-sender"
            )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking rows; give attempts in flight ``grace`` seconds, then cancel them (their
        rows go back untried) and close the HTTP client."""
        loop, self._loop = self._loop, None
        if loop is not None:
            self._stopping.set()
            self._wakeup.signal()
            await asyncio.gather(loop, return_exceptions=True)
            await self._wakeup.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poster.close()

    async def _run(self) -> None:
        pause = self.poll_interval
        while not self._stopping.is_set():
            try:
                started = await self._round()
                pause = self.poll_interval
            except Exception:  # the database went away, say: never end the sender for it
                log.exception("webhook sender round failed; trying again in %.1fs", pause)
                started, pause = 0, min(pause * 2, 30.0)
            self.rounds += 1
            if not started:
                await self._wakeup.wait(pause)

    # ---------------------------------------------------------------- one round
    async def _round(self) -> int:
        """Lease and start what every endpoint may take now; how many attempts started."""
        now = self.now()
        await self._sample_lag(now)
        await self._prune(now)
        async with self.store.engine.connect() as connection:
            due = (await connection.execute(self._sql.due_endpoints(now))).all()
        started = 0
        for row in due:
            endpoint = endpoint_of(row._mapping)
            capacity = self.breaker.capacity(endpoint.id, now, self.concurrency)
            free = capacity - self._in_flight[endpoint.id]
            if free > 0:
                started += await self._lease_and_start(endpoint, now, free)
        return started

    async def _lease_and_start(self, endpoint: Endpoint, now: float, free: int) -> int:
        token = str(uuid.uuid4())
        statement = self._sql.claim(endpoint.id, token, now, now + self.lease, free)
        async with self.store.engine.begin() as connection:
            rows = (await connection.execute(statement)).all()
        for row in rows:
            self._in_flight[endpoint.id] += 1
            task = asyncio.get_running_loop().create_task(
                self._deliver(endpoint, row, token), name=f"eventbus:webhook:{row.id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._finished)
        return len(rows)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wakeup.signal()

    async def _deliver(self, endpoint: Endpoint, row: Any, token: str) -> None:
        attempt = row.attempts + 1
        done = self.observer.started(endpoint, row, attempt) if self.observer else None
        try:
            started = self.now()
            result = await self.poster.post(endpoint, row.event_id, bytes(row.body))
            state = await self._settle(endpoint, row, token, started, result)
        except asyncio.CancelledError:  # stopping: the row goes back untried
            await asyncio.shield(self._release(token, row.position))
            raise
        except Exception as exc:
            log.exception("webhook delivery %s: settling failed; its lease will run out", row.id)
            result = AttemptResult(Verdict(Outcome.RETRY), 0.0, None, f"not settled: {exc!r}")
            state = "pending"
        finally:
            self._in_flight[endpoint.id] -= 1
        self.attempts += 1
        if done is not None:
            done(result, state)

    async def _settle(
        self, endpoint: Endpoint, row: Any, token: str, started: float, result: AttemptResult
    ) -> str:
        """Record the attempt; returns the delivery's new state."""
        now, attempt = self.now(), row.attempts + 1
        next_at = self._next_attempt(endpoint, attempt, result, now)
        delivered = result.verdict.outcome is Outcome.DELIVERED
        state = "delivered" if delivered else "pending" if next_at is not None else "dead"
        settle = self._sql.settle(
            token,
            row.position,
            now=now,
            next_at=next_at,
            delivered=delivered,
            status=result.status,
            error=result.error,
        )
        line = self._sql.log(
            row,
            attempt=attempt,
            started_at=started,
            latency=result.latency,
            status_code=result.status,
            error=result.error,
            outcome=state,
            next_attempt_at=next_at,
        )
        async with self.store.engine.begin() as connection:
            if not (await connection.execute(settle)).rowcount:
                log.warning("webhook delivery %s: lease ran out during its attempt", row.id)
                return "pending"
            await connection.execute(line)
            if result.verdict.outcome is Outcome.GONE:
                reason = "the receiver answered 410 Gone"
                await connection.execute(self._sql.disable(endpoint.id, reason, now))
        _log_attempt(endpoint, row, attempt, result, state, next_at, now)
        return state

    def _next_attempt(
        self, endpoint: Endpoint, attempt: int, result: AttemptResult, now: float
    ) -> float | None:
        """When the next attempt goes (``None``: no more), telling the breaker the outcome."""
        if result.verdict.outcome is not Outcome.RETRY:
            self.breaker.succeeded(endpoint.id)  # it answered: not an outage
            return None
        delay = self.schedule.next_delay(attempt, result.verdict.retry_after)
        self.breaker.failed(endpoint.id, now)
        if result.verdict.throttled:
            self.breaker.pause(endpoint.id, now + (delay or 0.0))
        return None if delay is None else now + delay

    async def _release(self, token: str, position: int) -> None:
        try:
            async with self.store.engine.begin() as connection:
                await connection.execute(self._sql.release(token, position))
        except Exception:
            log.warning(
                "could not release webhook delivery row %s; its lease will run out", position
            )

    async def _prune(self, now: float) -> None:
        """Once an hour: forget delivered rows and log lines older than ``retention``."""
        if time.monotonic() - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        await self.store.deliveries.prune(now - self.retention)

    async def _sample_lag(self, now: float) -> None:
        if self.observer is None or time.monotonic() - self._lag_at < self.lag_interval:
            return
        self._lag_at = time.monotonic()
        self.observer.lag(await self.store.deliveries.lag())


def _log_attempt(
    endpoint: Endpoint,
    row: Any,
    attempt: int,
    result: AttemptResult,
    state: str,
    next_at: float | None,
    now: float,
) -> None:
    """One line per attempt that did not deliver; the URL without credentials, no secret."""
    if state == "delivered":
        return
    where = f"{endpoint.id} ({redact_url(endpoint.url)})"
    if state == "dead":
        log.error(
            "webhook %s to %s failed attempt %d and is dead: %s",
            row.event_id,
            where,
            attempt,
            result.error,
        )
    else:
        wait = (next_at or now) - now
        log.warning(
            "webhook %s to %s failed attempt %d; trying again in %.0fs: %s",
            row.event_id,
            where,
            attempt,
            wait,
            result.error,
        )
