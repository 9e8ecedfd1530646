"""``OutboxRelay``: publishes what committed transactions staged, at least once, never lost.

A round claims a batch (see :mod:`eventbus.outbox.claims`), publishes it through the bus's
broker exactly as it was staged (the publish middleware ran at staging), then deletes the rows
— or marks them published, with ``retention`` — in one statement that checks the lease token.
A crash between publish and mark publishes the batch again once the lease has run out:
duplicates, never a loss (consumers' idempotency keys on the unchanged event id).

**Poison rows.** A row the broker refuses, or one over its size limit, is retried after
``retry_delays`` and, after ``max_attempts``, stays in the table as ``dead``: listed, replayed
and purged with :meth:`Outbox.dead_letters <eventbus.outbox.Outbox.dead_letters>`. It never
holds back rows of other keys; in ordered mode the rows after it *of its own key* wait, with a
warning in the log, until it is replayed or purged — the order of that key says they must. An
unreachable broker is not a row's fault: the batch is given back untried and the relay waits.

**Leases.** ``lease`` must exceed the time a batch takes to publish (the broker's publish
timeout, at least): a relay whose lease ran out finds its writes refused, and another relay may
have published the same rows meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.bus import EventBus
from eventbus.envelope import Envelope
from eventbus.errors import BrokerUnavailable, ConfigurationError, DecodeError, EventBusError
from eventbus.lifecycle import Lifecycle
from eventbus.outbox.claims import Statements, in_position_order
from eventbus.outbox.schema import envelope_of
from eventbus.outbox.store import Outbox
from eventbus.outbox.wakeup import Wakeup

__all__ = ["OutboxRelay"]

log = logging.getLogger("eventbus.outbox")

DEFAULT_RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0, 600.0)
CLAIM_WINDOW = 4
"""A claim looks first at the ``CLAIM_WINDOW * batch_size`` positions after the first pending
row: its cost then follows the batch, not the backlog (see :mod:`eventbus.outbox.claims`)."""


class OutboxRelay(Lifecycle):
    """Publishes committed outbox rows through ``bus`` (which must be running).

    ``ordering`` is ``"key"`` (rows of one key in commit order, one batch in flight per key) or
    ``"none"`` (any order). On PostgreSQL several relays split the work with ``SKIP LOCKED``.
    ``batch_size`` rows are claimed at a time, for ``lease`` seconds. An idle relay looks again
    every ``poll_interval`` seconds, or at once on PostgreSQL when a commit signals it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        bus: EventBus,
        *,
        outbox: Outbox | None = None,
        ordering: str = "key",
        batch_size: int = 200,
        lease: float = 30.0,
        poll_interval: float = 0.5,
        max_attempts: int = 10,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        retention: float = 0.0,
        now: Callable[[], float] | None = None,
    ) -> None:
        found = outbox if outbox is not None else bus.outbox
        if not isinstance(found, Outbox):
            raise ConfigurationError(
                "OutboxRelay needs the Outbox the events are staged in: "
                "EventBus(..., outbox=Outbox()) or OutboxRelay(engine, bus, outbox=...)"
            )
        _check(ordering, batch_size, lease, poll_interval, max_attempts, retry_delays, retention)
        self.engine, self.bus, self.outbox = engine, bus, found
        self.ordering = ordering
        self.batch_size, self.lease, self.poll_interval = batch_size, lease, poll_interval
        self.max_attempts, self.retry_delays = max_attempts, tuple(retry_delays)
        self.retention = retention
        self.now = now or found.now
        self._sql = Statements(found.table, ordered=ordering == "key", dialect=engine.dialect.name)
        self._wakeup = Wakeup(engine, found.channel)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.rounds = 0
        """Background rounds finished, successful or not (a health check can watch it grow)."""

    # ---------------------------------------------------------------- running
    async def run_once(self) -> int:
        """Publish everything committed and due now; returns how many rows were published."""
        total = 0
        while True:
            published, claimed = await self._round()
            total += published
            if claimed < self.batch_size or not published:
                return total  # drained, or what is left waits (retries, another relay's key)

    async def start(self) -> None:
        """Run in the background until :meth:`stop`."""
        if self._task is None:
            await self._wakeup.start()
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="eventbus:outbox-relay"
            )

    async def stop(self) -> None:
        """Finish the round in progress, then stop."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            self._wakeup.signal()
            await asyncio.gather(task, return_exceptions=True)
        await self._wakeup.stop()

    async def _run(self) -> None:
        pause = self.poll_interval
        while not self._stopping.is_set():
            try:
                await self.run_once()
                pause = self.poll_interval
            except BrokerUnavailable as exc:
                log.warning("outbox relay: %s; trying again in %.1fs", exc, pause)
                pause = min(pause * 2, 30.0)
            except Exception:  # the database went away, say: never end the relay for it
                log.exception("outbox relay round failed; trying again in %.1fs", pause)
                pause = min(pause * 2, 30.0)
            self.rounds += 1
            await self._wakeup.wait(pause)

    # ---------------------------------------------------------------- one round
    async def _round(self) -> tuple[int, int]:
        """Claim, publish, settle one batch: (rows published, rows claimed)."""
        token, now = str(uuid.uuid4()), self.now()
        rows, held_back = await self._claim(token, now)
        if held_back:
            await self._write(self._sql.release(token, [r.position for r in held_back]))
            rows = [r for r in rows if r not in held_back]
        if not rows:
            return 0, len(held_back)
        try:
            done, failed, untried = await self._publish(rows)
        except BrokerUnavailable:  # not the rows' fault: give them back untried, at once
            await self._write(self._sql.release(token, [r.position for r in rows]))
            raise
        await self._settle(token, done, failed, untried)
        await self._expire()
        return len(done), len(rows) + len(held_back)

    async def _claim(self, token: str, now: float) -> tuple[list[Any], list[Any]]:
        """Lease a batch, in position order: (the rows claimed, those of them held back).

        The claim looks at the ``CLAIM_WINDOW`` batches of positions after the first pending
        row; when those held too few rows that may go (the end of the backlog, rows leased by
        other relays or held back), a second claim looks at every row. Each claim has its own
        transaction: a relay never waits for rows while it holds others."""
        limit = self.batch_size
        async with self.engine.begin() as connection:
            rows = await self._lease(connection, token, now, limit, CLAIM_WINDOW * limit)
            if len(rows) == limit:
                return rows, await self._held_back(connection, token, rows)
        async with self.engine.begin() as connection:
            more = await self._lease(connection, token, now, limit - len(rows), None)
            rows = in_position_order([*rows, *more])
            return rows, await self._held_back(connection, token, rows)

    async def _lease(
        self, connection: Any, token: str, now: float, limit: int, window: int | None
    ) -> list[Any]:
        statement, parameters = self._sql.claim(token, now, now + self.lease, limit, window)
        return self._sql.rows(await connection.execute(statement, parameters))

    async def _held_back(self, connection: Any, token: str, rows: list[Any]) -> list[Any]:
        """Ordered mode: claimed rows whose key has an earlier row this claim does not hold."""
        if self.ordering != "key":
            return []
        keys = sorted({r.aggregateid for r in rows if r.aggregateid is not None})
        if not keys:
            return []
        query, parameters = self._sql.first_unclaimed(token, keys, rows[-1].position)
        first = dict((await connection.execute(query, parameters)).all())
        return [r for r in rows if r.aggregateid in first and r.position > first[r.aggregateid]]

    async def _publish(self, rows: list[Any]) -> tuple[list[Any], list[tuple[Any, str]], list[Any]]:
        """Send ``rows``: (sent, failed with why, not tried because an earlier row of their key
        failed). A refused batch is sent again row by row, to find the rows at fault."""
        messages, failed, untried = self._readable(rows)
        try:
            await self.bus.send_batch([(r.aggregatetype, e) for r, e in messages])
        except BrokerUnavailable:
            raise
        except EventBusError:
            return await self._one_by_one(messages, failed, untried)
        return [r for r, _ in messages], failed, untried

    def _readable(
        self, rows: list[Any]
    ) -> tuple[list[tuple[Any, Envelope]], list[tuple[Any, str]], list[Any]]:
        """The rows that can be sent as they are, those that cannot, and those held back."""
        limit = self.bus.max_message_bytes
        messages: list[tuple[Any, Envelope]] = []
        failed: list[tuple[Any, str]] = []
        untried: list[Any] = []
        stuck: set[str] = set()
        for row in rows:
            if self._waits(row, stuck):
                untried.append(row)
                continue
            try:
                envelope = envelope_of(row)
            except DecodeError as exc:
                failed.append((row, f"the staged row cannot be read: {exc}"))
                stuck.add(row.aggregateid)
                continue
            if len(envelope.data) > limit:
                failed.append((row, f"{len(envelope.data)} bytes, over max_message_bytes {limit}"))
                stuck.add(row.aggregateid)
                continue
            messages.append((row, envelope))
        return messages, failed, untried

    def _waits(self, row: Any, stuck: set[str]) -> bool:
        """Ordered mode: an earlier row of this row's key failed in this batch."""
        return self.ordering == "key" and row.aggregateid is not None and row.aggregateid in stuck

    async def _one_by_one(
        self,
        messages: list[tuple[Any, Envelope]],
        failed: list[tuple[Any, str]],
        untried: list[Any],
    ) -> tuple[list[Any], list[tuple[Any, str]], list[Any]]:
        done: list[Any] = []
        stuck = {r.aggregateid for r, _ in failed}
        for row, envelope in messages:
            if self._waits(row, stuck):
                untried.append(row)
                continue
            try:
                await self.bus.send_batch([(row.aggregatetype, envelope)])
            except BrokerUnavailable:
                raise
            except EventBusError as exc:
                failed.append((row, f"{type(exc).__name__}: {exc}"))
                stuck.add(row.aggregateid)
                continue
            done.append(row)
        return done, failed, untried

    async def _settle(
        self, token: str, done: list[Any], failed: list[tuple[Any, str]], untried: list[Any]
    ) -> None:
        sql, now = self._sql, self.now()
        positions = [r.position for r in done]
        async with self.engine.begin() as connection:
            if positions and self.retention > 0:
                await connection.execute(sql.keep_published(token, positions, now))
            elif positions:
                await connection.execute(sql.delete_published(token, positions))
            for row, error in failed:
                dead = row.attempts + 1 >= self.max_attempts
                delay = self.retry_delays[min(row.attempts, len(self.retry_delays) - 1)]
                await connection.execute(
                    sql.failed(token, row.position, error=error, next_at=now + delay, dead=dead)
                )
                _log_failure(row, error, dead, delay, self.ordering == "key")
            if untried:
                await connection.execute(sql.release(token, [r.position for r in untried]))

    async def _expire(self) -> None:
        if self.retention > 0:
            await self._write(self._sql.expired_published(self.now() - self.retention))

    async def _write(self, statement: Any) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(statement)


def _log_failure(row: Any, error: str, dead: bool, delay: float, ordered: bool) -> None:
    key = f" (key {row.aggregateid!r}: its later rows wait)" if ordered and row.aggregateid else ""
    if dead:
        message = "outbox row %s (event %s) failed its last attempt and is dead%s: %s"
        log.error(message, row.position, row.id, key, error)
    else:
        message = "outbox row %s (event %s) failed attempt %d; trying again in %gs%s: %s"
        log.warning(message, row.position, row.id, row.attempts + 1, delay, key, error)


def _check(
    ordering: str,
    batch_size: int,
    lease: float,
    poll_interval: float,
    max_attempts: int,
    retry_delays: Sequence[float],
    retention: float,
) -> None:
    if ordering not in ("key", "none"):
        raise ConfigurationError(f"ordering must be 'key' or 'none', not {ordering!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1 and max_attempts >= 1):
        raise ConfigurationError("batch_size and max_attempts must be whole numbers >= 1")
    if not (lease > 0 and poll_interval > 0 and retention >= 0 and retry_delays):
        raise ConfigurationError(
            "lease and poll_interval must be > 0 seconds, retention >= 0, and retry_delays "
            "must list at least one delay"
        )
    if any(d < 0 for d in retry_delays):
        raise ConfigurationError("retry_delays must be >= 0 seconds")
