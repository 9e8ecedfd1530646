"""One relay trial: stage the rows, start the relay processes together, time the drain.

The trial makes fresh tables (``bench_outbox_<name>``: a SQLite file in a temporary directory,
or private tables on PostgreSQL, dropped afterwards) and a fresh broker channel. It starts
the relay processes (:mod:`bench.outbox.worker`) and, while they connect and warm up, stages
the events — ``bus.publish_many(..., session=s)``, ``PER_TRANSACTION`` to a committed
transaction, over ``KEYS`` keys. Once every relay said it is ready, all are told to go at the
same moment; the drain time runs from then until the last relay reported that nothing is
pending. Rate = staged rows / drain time. Then it checks that every row was published exactly
once and is gone from the table, and that the channel holds them all (plus one warm-up message
per relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.common import UserCreated, make_event
from bench.outbox import brokers
from bench.outbox.common import (
    BATCH_SIZE,
    KEYS,
    PER_TRANSACTION,
    Cell,
    broker_url,
    database_url,
    make_engine,
    outbox_for,
)
from eventbus import EventBus
from eventbus.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent.parent
READY_TIMEOUT = 120.0
DRAIN_TIMEOUT = 300.0


class Worker:
    """A relay process: JSON lines on its stdout, "go" on its stdin, stderr into a file."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: IO[bytes], path: Path) -> None:
        self.process, self.stderr, self.path = process, stderr, path

    async def message(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            await self.process.wait()
            tail = [
                line
                for line in self.path.read_text(errors="replace").splitlines()
                if "Error" in line
            ][-2:]
            raise RuntimeError(f"relay exited {self.process.returncode}: {' / '.join(tail)}")
        message: dict[str, Any] = json.loads(line)
        return message

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()
        self.stderr.close()


async def spawn(cell: Cell, url: str, name: str, channel: str, directory: Path, n: int) -> Worker:
    path = directory / f"relay-{n}.err"
    stderr = path.open("wb")
    command = [
        sys.executable, "-m", "bench.outbox.worker", cell.impl, cell.broker, cell.ordering,
        "--database", url, "--tables", name, "--channel", channel,
        "--broker-url", broker_url(cell.broker), "--batch-size", str(BATCH_SIZE),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )  # fmt: skip
    return Worker(process, stderr, path)


async def stage(engine: AsyncEngine, outbox: Outbox, events: int) -> float:
    """Commit ``events`` events through the outbox; returns how long that took."""
    bus = EventBus("memory://", service="bench", outbox=outbox)  # staging needs no start
    started = time.perf_counter()
    for first in range(0, events, PER_TRANSACTION):
        last = min(events, first + PER_TRANSACTION)
        items = [(make_event(n), f"user-{n % KEYS:02d}") for n in range(first, last)]
        async with AsyncSession(engine) as session, session.begin():
            await bus.publish_many(items, session=session)
    return time.perf_counter() - started


async def race(workers: list[Worker]) -> tuple[float, list[dict[str, Any]]]:
    """Tell every relay to go at once; the time until the last one found nothing pending."""
    started = time.perf_counter()
    for worker in workers:
        worker.go()
    for worker in workers:
        assert worker.process.stdin is not None
        await worker.process.stdin.drain()
    reports = await asyncio.gather(*(w.message(DRAIN_TIMEOUT) for w in workers))
    return time.perf_counter() - started, list(reports)


async def drive(cell: Cell, engine: AsyncEngine, outbox: Outbox, events: int, **where: Any) -> Any:
    """Start the relays, stage meanwhile, race them; (staging time, drain time, reports)."""
    workers = [
        await spawn(cell, where["url"], where["name"], where["channel"], where["directory"], n)
        for n in range(cell.relays)
    ]
    try:
        staging = await stage(engine, outbox, events)
        for worker in workers:
            ready = await worker.message(READY_TIMEOUT)
            if not ready.get("ready"):
                raise RuntimeError(f"relay not ready: {ready}")
        elapsed, reports = await race(workers)
    finally:
        for worker in workers:
            await worker.close()
    return staging, elapsed, reports


async def check(cell: Cell, engine: AsyncEngine, outbox: Outbox, events: int, **what: Any) -> None:
    """Every row published once, none left behind, and the channel holds them all."""
    published = sum(r["published"] for r in what["reports"])
    if published != events:
        raise RuntimeError(f"{published} rows published, {events} staged")
    backlog = await outbox.backlog(engine)
    if backlog.pending or backlog.dead:
        raise RuntimeError(f"left in the outbox: {backlog}")
    expected = events + cell.relays  # and one warm-up message per relay
    count = await brokers.arrived(cell.broker, what["channel"], expected)
    if count is not None and count != expected:
        raise RuntimeError(f"{count} messages on the channel, expected {expected}")


async def relay_trial(cell: Cell, events: int) -> dict[str, Any]:
    """Run one trial of ``cell`` (see the module documentation); its figures."""
    name = uuid.uuid4().hex[:12]
    channel = f"bench-outbox-{name}"
    saved_topic, UserCreated.event_topic = UserCreated.event_topic, channel
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as temporary:
        directory = Path(temporary)
        url = database_url(cell.db, directory)
        engine, outbox = make_engine(url), outbox_for(name)
        try:
            await outbox.create_tables(engine)
            await brokers.prepare(cell.broker, channel)
            where = {"url": url, "name": name, "channel": channel, "directory": directory}
            staging, elapsed, reports = await drive(cell, engine, outbox, events, **where)
            await check(cell, engine, outbox, events, reports=reports, channel=channel)
        finally:
            UserCreated.event_topic = saved_topic
            with contextlib.suppress(Exception):
                async with engine.begin() as connection:
                    await connection.run_sync(outbox.metadata.drop_all)
            await engine.dispose()
            await brokers.cleanup(cell.broker, channel)
    return {
        "events": events,
        "events_per_s": events / elapsed,
        "cpu_us_per_event": sum(r["cpu_s"] for r in reports) / events * 1e6,
        "drain_s": elapsed,
        "staging_s": staging,
        "published": [r["published"] for r in reports],
        "waits": [r["waits"] for r in reports],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
    }
