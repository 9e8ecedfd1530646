"""What the event store sustains: ``python -m bench.eventstore [--reps N] [--scale X] [--no-docs]``.

On SQLite (a file, the driver's default synchronous mode) and on the PostgreSQL server of
``scripts/services`` (fsync on), each repetition runs, each on fresh tables:

* ``commit-floor``: the database's own floor, sequential one-row insert transactions on a
  table of their own (what every awaited append pays at least: its commit);
* ``append-1``: one event per append, each awaited, streams of 10 events (``expected_version``
  = the version before): appends per second;
* ``append-100``: 100 events per append, each on a new stream: events per second;
* ``operation``: an event-sourced operation as applications do it, one after another: load
  an aggregate through the ``Repository``, run a command, save its event (the figure the
  ``eventsourcing`` library publishes, about 3,100 per second on PostgreSQL);
* ``read_all``: catching up on the whole global feed (everything appended above): events
  per second;
* ``projection``: a projection catching up on that feed into a table of the same database
  (an upsert per event; batches of 100 commit with the checkpoint): events per second.

The figure is the median over the repetitions. Writes ``bench/results/eventstore.json`` and
the table between the ``eventstore`` markers of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.report import update_docs
from eventbus import Event
from eventbus.aggregate import Aggregate, applies
from eventbus.eventstore import (
    EventStore,
    Projection,
    ProjectionContext,
    ProjectionRunner,
    Repository,
)

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("<!-- eventstore:start -->", "<!-- eventstore:end -->")
WORKLOADS = ("commit-floor", "append-1", "append-100", "operation", "read_all", "projection")
UNITS = {
    "commit-floor": "commits/s",
    "append-1": "appends/s",
    "append-100": "events/s",
    "operation": "operations/s",
    "read_all": "events/s",
    "projection": "events/s",
}


class Deposited(Event):
    event_type = "bench.money.deposited"
    account: str
    amount: int


class Account(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.balance = 0

    def deposit(self, amount: int) -> None:
        self.record(Deposited(account=self.id, amount=amount))

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


async def trial(database: str, counts: dict[str, int]) -> dict[str, float]:
    """One repetition of every workload on ``database``, on fresh tables."""
    engine, cleanup = _engine(database)
    store = EventStore(engine, service="bench", events=[Deposited], prefix=_prefix())
    await store.create_tables()
    try:
        return {
            "commit-floor": await _commit_floor(engine, counts["append-1"]),
            "append-1": await _append_one(store, counts["append-1"]),
            "append-100": await _append_hundred(store, counts["append-100"]),
            "operation": await _operations(store, counts["operation"]),
            "read_all": await _read_all(store),
            "projection": await _projection(engine, store),
        }
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(store.metadata.drop_all)
        await engine.dispose()
        cleanup()


def _engine(database: str) -> tuple[AsyncEngine, Any]:
    if database == "sqlite":
        folder = tempfile.TemporaryDirectory()
        url = f"sqlite+aiosqlite:///{folder.name}/bench.sqlite3"
        return create_async_engine(url, connect_args={"timeout": 30}), folder.cleanup
    server = os.environ.get("EVENTBUS_TEST_POSTGRES_URL")
    if not server:
        raise SystemExit("EVENTBUS_TEST_POSTGRES_URL is not set: run scripts/services start")
    return create_async_engine(server), lambda: None


def _prefix() -> str:
    return f"b{uuid.uuid4().hex[:8]}_"


async def _commit_floor(engine: AsyncEngine, commits: int) -> float:
    """The database's own floor for sequential awaited writes: one one-row insert per
    transaction on a table of its own, through the same engine (what any append costs at
    least: a commit, which waits for the disk with fsync on)."""
    table = sa.Table(f"{_prefix()}floor", sa.MetaData(), sa.Column("n", sa.Integer))
    async with engine.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
    start = time.perf_counter()
    for n in range(commits):
        async with engine.begin() as connection:
            await connection.execute(sa.insert(table).values(n=n))
    rate = commits / (time.perf_counter() - start)
    async with engine.begin() as connection:
        await connection.run_sync(table.metadata.drop_all)
    return rate


async def _append_one(store: EventStore, appends: int) -> float:
    start = time.perf_counter()
    for n in range(appends):
        stream, version = f"one-{n // 10}", n % 10
        event = Deposited(account=stream, amount=n)
        await store.append(stream, [event], expected_version=version)
    return appends / (time.perf_counter() - start)


async def _append_hundred(store: EventStore, appends: int) -> float:
    batches = [[Deposited(account=f"h{b}", amount=n) for n in range(100)] for b in range(appends)]
    start = time.perf_counter()
    for b, events in enumerate(batches):
        await store.append(f"hundred-{b}", events, expected_version=0)
    return appends * 100 / (time.perf_counter() - start)


async def _operations(store: EventStore, operations: int) -> float:
    accounts = Repository(store, Account)
    start = time.perf_counter()
    for n in range(operations):
        account = await accounts.get(f"op-{n % 50}", missing_ok=True)
        account.deposit(n)
        await accounts.save(account)
    return operations / (time.perf_counter() - start)


async def _read_all(store: EventStore) -> float:
    start, read = time.perf_counter(), 0
    async for _ in store.read_all(after=0):
        read += 1
    return read / (time.perf_counter() - start)


async def _projection(engine: AsyncEngine, store: EventStore) -> float:
    """A projection catching up on the whole feed into a table of the same database: one
    upsert per event, in batches of 100 whose transaction also moves the checkpoint."""
    balances = sa.Table(
        f"{store.table.name}_balances",
        store.metadata,
        sa.Column("account", sa.String(255), primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
    )
    async with engine.begin() as connection:
        await connection.run_sync(store.metadata.create_all, tables=[balances])
    projection = Projection("balances")

    @projection.on(Deposited)
    async def deposited(event: Deposited, ctx: ProjectionContext) -> None:
        changed = await ctx.session.execute(
            sa.update(balances)
            .where(balances.c.account == event.account)
            .values(balance=balances.c.balance + event.amount)
        )
        if not changed.rowcount:  # type: ignore[attr-defined]
            await ctx.session.execute(
                sa.insert(balances).values(account=event.account, balance=event.amount)
            )

    runner = ProjectionRunner(store, projection, batch_size=100)
    await runner.create_tables()
    start = time.perf_counter()
    applied = await runner.run_once()
    return applied / (time.perf_counter() - start)


def measure(reps: int, scale: float) -> dict[str, Any]:
    counts = {
        "append-1": max(20, int(2_000 * scale)),
        "append-100": max(2, int(100 * scale)),
        "operation": max(20, int(2_000 * scale)),
    }
    trials: list[dict[str, Any]] = []
    for rep in range(reps):
        for database in ("sqlite", "postgresql"):
            got = asyncio.run(trial(database, counts))
            trials.append({"rep": rep, "database": database, **got})
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in got.items())
            print(f"rep {rep} {database}: {shown}", flush=True)
    summary = {
        database: {
            workload: {
                "median": statistics.median(t[workload] for t in mine),
                "min": min(t[workload] for t in mine),
                "max": max(t[workload] for t in mine),
            }
            for workload in WORKLOADS
        }
        for database in ("sqlite", "postgresql")
        if (mine := [t for t in trials if t["database"] == database])
    }
    return {"reps": reps, "counts": counts, "trials": trials, "summary": summary}


def render(results: dict[str, Any]) -> str:
    counts = results["counts"]
    lines = [
        f"{results['reps']} repetitions; {counts['append-1']:,} one-event appends, "
        f"{counts['append-100']:,} hundred-event appends and {counts['operation']:,} "
        "operations per repetition, then one read of the whole feed and one projection of it. "
        "Medians with (min–max).",
        "",
        "| database | workload | rate |",
        "|---|---|---|",
    ]
    for database, rows in results["summary"].items():
        for workload in WORKLOADS:
            cell = rows[workload]
            lines.append(
                f"| {database} | `{workload}` | {cell['median']:,.0f} "
                f"({cell['min']:,.0f}–{cell['max']:,.0f}) {UNITS[workload]} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eventstore.json")
    args = parser.parse_args(argv)
    results = measure(args.reps, args.scale)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", render(results), MARKERS)
    print(render(results))


if __name__ == "__main__":
    main()
