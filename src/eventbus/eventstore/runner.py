"""``ProjectionRunner``: keeps a :class:`~eventbus.eventstore.Projection` up to date with the
store's global feed, from its checkpoint, skipping nothing and applying nothing twice.

**A batch is one transaction.** The runner opens a transaction on the read model's database,
locks the projection's checkpoint row, reads up to ``batch_size`` events after it
(``store.read_all``), runs the handlers in that transaction (``ctx.session``) and moves the
checkpoint to the last event read — handled or not — before it commits. The read model and the
checkpoint commit together or not at all: a crash anywhere before the commit leaves both as
they were, and the events are applied again, once, from the same checkpoint. The lock makes two
runners of one projection take turns: the second reads the checkpoint the first committed.

**Without a database** (``InMemoryEventStore`` and no ``engine``) the checkpoint is kept in
memory and moves after each event, since there is no transaction to undo a partial batch.

**A handler that raises** rolls its batch back: the checkpoint does not move. Running in the
background, the runner logs the error, waits (``retry_delays``, the last one repeated) and
tries again, the failed event first in a transaction of its own, so the events before it are
committed and ``position`` stops right before it. It never skips the event: a poison event
blocks the projection until the handler is fixed (or handles it), with ``failure`` saying
which event, why and how often — a read model that silently missed an event is wrong for good.

The feed is in commit order (see :mod:`eventbus.eventstore.sql`), so a checkpoint at ``p``
means every event up to ``p`` is applied: :meth:`ProjectionRunner.wait_for` and
:meth:`ProjectionRunner.lag` read it as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from eventbus.errors import ConfigurationError
from eventbus.eventstore.projections import Projection
from eventbus.eventstore.records import EventStoreProtocol, StoredEvent
from eventbus.lifecycle import Lifecycle

__all__ = ["CheckpointTransaction", "Checkpoints", "ProjectionFailure", "ProjectionRunner"]

log = logging.getLogger("eventbus.eventstore")

DEFAULT_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclasses.dataclass(frozen=True)
class ProjectionFailure:
    """Why the projection is not moving: the last error, and on which event."""

    record: StoredEvent | None
    """The event whose handler raised; None when the failure was not a handler's (the
    database went away, say)."""
    error: BaseException
    attempts: int
    """Failed attempts in a row (on this event)."""

    def __str__(self) -> str:
        where = "outside the handlers"
        if self.record is not None:
            r = self.record
            where = f"at position {r.position} (stream {r.stream_id!r} version {r.version}, "
            where += f"{r.envelope.type!r}, event {r.envelope.id})"
        return f"failed {self.attempts} time(s) {where}: {type(self.error).__name__}: {self.error}"


class CheckpointTransaction(Protocol):
    """One batch's transaction: the checkpoint as locked, and the session handlers write in."""

    position: int
    session: Any

    async def move_to(self, position: int) -> None:
        """Set the checkpoint (it is written with the transaction's commit)."""


class Checkpoints(Protocol):
    """Where checkpoints are kept: a table in the read model's database, or memory."""

    async def create_tables(self) -> None: ...

    async def load(self, name: str) -> int:
        """The committed checkpoint of projection ``name`` (0: it has applied nothing)."""

    def transaction(self, name: str) -> AbstractAsyncContextManager[CheckpointTransaction]:
        """A transaction holding ``name``'s checkpoint locked; it commits when the block
        ends and rolls back when it raises."""

    async def behind(self, store: EventStoreProtocol, after: int) -> tuple[int, int]:
        """(the store's last position, how many events it holds after ``after``)."""


async def count_after(store: EventStoreProtocol, after: int) -> tuple[int, int]:
    """:meth:`Checkpoints.behind` for any store, by reading the feed after ``after``."""
    head, count = after, 0
    async for record in store.read_all(after):
        head, count = record.position, count + 1
    return head, count


class _MemoryTransaction:
    def __init__(self, checkpoints: dict[str, int], name: str) -> None:
        self._checkpoints, self._name = checkpoints, name
        self.position = checkpoints.get(name, 0)
        self.session: Any = None

    async def move_to(self, position: int) -> None:
        self.position = self._checkpoints[self._name] = position  # no transaction: at once


class MemoryCheckpoints:
    """Checkpoints in a dict, for stores without a database."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    async def create_tables(self) -> None:
        """Nothing to create."""

    async def load(self, name: str) -> int:
        return self.positions.get(name, 0)

    @contextlib.asynccontextmanager
    async def transaction(self, name: str) -> AsyncIterator[CheckpointTransaction]:
        yield _MemoryTransaction(self.positions, name)

    async def behind(self, store: EventStoreProtocol, after: int) -> tuple[int, int]:
        return await count_after(store, after)


def _checkpoints_for(
    store: EventStoreProtocol, engine: Any, prefix: str | None, schema: str | None, metadata: Any
) -> Checkpoints:
    engine = engine if engine is not None else getattr(store, "engine", None)
    if engine is None:
        return MemoryCheckpoints()
    # Imported here, by name: SQLAlchemy is only needed once there is a database.
    sql = importlib.import_module("eventbus.eventstore.checkpoints")
    found: Checkpoints = sql.SqlCheckpoints.for_store(store, engine, prefix, schema, metadata)
    return found


class ProjectionRunner(Lifecycle):
    """Runs ``projection`` over ``store``'s global feed (see the module).

    The checkpoint is kept in ``engine``'s database — by default the store's, in the table
    ``{prefix}checkpoints`` with the store's prefix, schema and metadata — or in memory for a
    store without a database. ``batch_size`` events are applied per transaction; once caught
    up, a running runner looks again every ``poll_interval`` seconds.
    """

    def __init__(
        self,
        store: EventStoreProtocol,
        projection: Projection,
        *,
        engine: Any = None,
        prefix: str | None = None,
        schema: str | None = None,
        metadata: Any = None,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    ) -> None:
        if not isinstance(projection, Projection):
            raise ConfigurationError(f"ProjectionRunner runs a Projection, not {projection!r}")
        _check(batch_size, poll_interval, retry_delays)
        self.store, self.projection = store, projection
        self.checkpoints = _checkpoints_for(store, engine, prefix, schema, metadata)
        self.batch_size, self.poll_interval = batch_size, poll_interval
        self.retry_delays = tuple(retry_delays)
        self.position = 0
        """The checkpoint as this runner last committed or read it: every event up to it is
        applied."""
        self.failure: ProjectionFailure | None = None
        """Why the projection is not moving, until a batch commits past the failed event."""
        self._alone: int | None = None  # a position that failed: retried in a batch of its own
        self._lock = asyncio.Lock()  # one batch (or rebuild) at a time in this process
        self._progress = asyncio.Condition()
        self._wake, self._stopping = asyncio.Event(), asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def create_tables(self) -> None:
        """Create the checkpoints table if it does not exist (nothing, in memory)."""
        await self.checkpoints.create_tables()

    # ---------------------------------------------------------------- applying
    async def run_once(self) -> int:
        """Apply every event committed now after the checkpoint, a batch per transaction;
        returns how many events were applied or passed over. A handler's error is raised once
        its batch has rolled back."""
        return await self._catch_up(None)

    async def _catch_up(self, stopping: asyncio.Event | None) -> int:
        total, more = 0, True
        while more and not (stopping is not None and stopping.is_set()):
            done, more = await self._batch()
            total += done
        return total

    async def _batch(self) -> tuple[int, bool]:
        """One transaction: (events applied or passed over, whether more may follow)."""
        async with self._lock:
            try:
                async with self.checkpoints.transaction(self.projection.name) as transaction:
                    feed = self.store.read_all(transaction.position, limit=self.batch_size)
                    records = [record async for record in feed]
                    done = 0
                    for record in records:
                        if record.position == self._alone and done:
                            break  # commit the events before the one that failed, without it
                        await self._apply(record, transaction)
                        await transaction.move_to(record.position)
                        done += 1
                    position = transaction.position
            except Exception:
                with contextlib.suppress(Exception):  # where it is now (in memory: moved on)
                    await self._moved(await self.checkpoints.load(self.projection.name))
                raise
            await self._committed(position)
        return done, done < len(records) or len(records) == self.batch_size

    async def _apply(self, record: StoredEvent, transaction: CheckpointTransaction) -> None:
        try:
            await self.projection.apply(record, transaction.session)
        except Exception as exc:
            self.failure = ProjectionFailure(record, exc, self._attempts(record))
            self._alone = record.position
            raise

    def _attempts(self, record: StoredEvent | None) -> int:
        """Failed attempts in a row, counting this one (on this event, for a handler's)."""
        before = self.failure
        if before is None:
            return 1
        if record is None or before.record is None or before.record.position == record.position:
            return before.attempts + 1
        return 1

    async def _committed(self, position: int) -> None:
        if self._alone is not None and position >= self._alone:
            self._alone, self.failure = None, None
        elif self.failure is not None and self.failure.record is None:
            self.failure = None  # what failed outside the handlers works again
        await self._moved(position)

    async def _moved(self, position: int) -> None:
        self.position = position
        async with self._progress:
            self._progress.notify_all()

    async def rebuild(self) -> None:
        """Start the read model over: in one transaction the projection's reset hook clears it
        and the checkpoint goes back to 0; every event is then applied again, from the first
        (by the running runner, or the next :meth:`run_once`)."""
        async with self._lock:
            async with self.checkpoints.transaction(self.projection.name) as transaction:
                await self.projection.reset(transaction.session)
                await transaction.move_to(0)
            await self._committed(0)
        self._wake.set()

    # ---------------------------------------------------------------- following
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Follow the feed in the background until :meth:`stop`: catch up, then look for new
        events every ``poll_interval`` seconds; a failure is logged and retried."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name=f"eventbus:projection:{self.projection.name}"
            )

    async def stop(self) -> None:
        """Finish the batch in progress (it commits or rolls back), then stop."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            self._wake.set()
            await asyncio.gather(task, return_exceptions=True)

    async def _follow(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._catch_up(self._stopping)  # stop() ends it between batches
            except Exception as exc:  # never end the runner for it: wait, and try again
                failures += 1
                delay = self.retry_delays[min(failures, len(self.retry_delays)) - 1]
                self._failed(exc, delay)
                await _wait(self._stopping, delay)
                continue
            failures = 0
            await _wait(self._wake, self.poll_interval)
            self._wake.clear()

    def _failed(self, exc: Exception, delay: float) -> None:
        if self.failure is None or self.failure.error is not exc:  # not a handler's error
            self.failure = ProjectionFailure(None, exc, self._attempts(None))
        log.error(
            "projection %r %s; the projection waits and tries again in %gs",
            self.projection.name,
            self.failure,
            delay,
            exc_info=exc,
        )

    # ---------------------------------------------------------------- reading progress
    async def wait_for(self, position: int | None = None, *, timeout: float = 10.0) -> int:
        """Return once every event up to ``position`` is applied — by default up to the
        store's last event now, so ``await runner.wait_for()`` after an append shows that
        append in the read model (read-your-writes). Returns the checkpoint reached.

        A running runner is woken to look at once. A runner that is not running waits for
        the checkpoint another process's runner commits. ``TimeoutError`` after ``timeout``
        seconds, saying where the projection is and why it is stuck, if it is.
        """
        if position is None:
            position, _ = await self.checkpoints.behind(self.store, self.position)
        target, deadline = position, time.monotonic() + timeout
        if self.running:
            self._wake.set()
            async with self._progress:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._progress.wait_for(lambda: self.position >= target), timeout
                    )
            reached = self.position
        else:
            while (reached := await self.checkpoints.load(self.projection.name)) < target:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(min(self.poll_interval, max(deadline - time.monotonic(), 0)))
        if reached < target:
            raise TimeoutError(self._not_reached(target, reached, timeout))
        return reached

    def _not_reached(self, target: int, reached: int, timeout: float) -> str:
        message = (
            f"projection {self.projection.name!r} has applied the events up to position "
            f"{reached}, not yet up to {target}, after {timeout}s"
        )
        if self.failure is not None:
            message += f": it {self.failure}"
        elif not self.running:
            message += " (this runner is not running: it waits for another one to apply them)"
        return message

    async def lag(self) -> int:
        """How many events the store holds after the committed checkpoint (0: caught up)."""
        checkpoint = await self.checkpoints.load(self.projection.name)
        return (await self.checkpoints.behind(self.store, checkpoint))[1]

    def __repr__(self) -> str:
        return f"ProjectionRunner({self.projection.name!r}, position={self.position})"


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def _check(batch_size: int, poll_interval: float, retry_delays: Sequence[float]) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigurationError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
    if not poll_interval > 0:
        raise ConfigurationError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
    if not retry_delays or any(d < 0 for d in retry_delays):
        raise ConfigurationError("retry_delays must list at least one delay, each >= 0 seconds")
