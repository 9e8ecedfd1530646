"""What staging costs the caller's transaction: ``python -m bench.outbox.staging DB``.

The application's transaction inserts user rows into a small ``users`` table; staging adds
one event per row in the same transaction. Two shapes:

* ``publish``: ``SINGLE`` transactions of one user row each, plus ``await bus.publish(event,
  key=user_id, session=s)``;
* ``publish_many``: ``BATCH`` transactions of ``PER_TRANSACTION`` user rows (one multi-row
  insert), plus one ``await bus.publish_many([(event, user_id), ...], session=s)``.

Each transaction is timed from ``begin`` until its commit returned. A run times the same
number of transactions without and with staging, the two in alternating order from run to
run; the cost of staging is their difference per event. The figures are medians over
``RUNS`` runs (after one warm-up run), on a SQLite file or private PostgreSQL tables.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.common import make_event
from bench.outbox.common import PER_TRANSACTION, database_url, make_engine, outbox_for
from eventbus import EventBus

SINGLE = 200
BATCH = 20
RUNS = 5


def users_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        f"bench_users_{name}",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )


class Shop:
    """The application: its users table, an outbox, and a bus that stages (never started)."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.outbox = outbox_for(name)
        self.users = users_table(self.outbox.metadata, name)
        self.bus = EventBus("memory://", service="bench", outbox=self.outbox)
        self.ids: Iterator[int] = itertools.count()

    def rows(self, count: int) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {
                "id": f"user-{n:08d}",
                "email": f"user{n}@example.com",
                "name": "Ada",
                "created_at": now,
            }
            for n in itertools.islice(self.ids, count)
        ]

    async def transaction(self, size: int, staged: bool) -> float:
        """One transaction of ``size`` user rows (and as many staged events); its seconds."""
        rows = self.rows(size)
        started = time.perf_counter()
        async with AsyncSession(self.engine) as session, session.begin():
            await session.execute(sa.insert(self.users), rows)
            if staged and size == 1:
                await self.bus.publish(make_event(0), key=rows[0]["id"], session=session)
            elif staged:
                items = [(make_event(n), row["id"]) for n, row in enumerate(rows)]
                await self.bus.publish_many(items, session=session)
        return time.perf_counter() - started

    async def timed(self, count: int, size: int, staged: bool) -> float:
        """Mean seconds of ``count`` such transactions."""
        return sum([await self.transaction(size, staged) for _ in range(count)]) / count


async def measure(shop: Shop, count: int, size: int, runs: int) -> dict[str, Any]:
    """Per event: the transaction's time without staging, and what staging added."""
    plain, added = [], []
    for run in range(runs + 1):
        order = (False, True) if run % 2 == 0 else (True, False)
        means = {staged: await shop.timed(count, size, staged) for staged in order}
        if run:  # the first run warms up connections and statement caches
            plain.append(means[False] / size * 1e6)
            added.append((means[True] - means[False]) / size * 1e6)
    return {
        "tx_us_per_row": statistics.median(plain),
        "added_us_per_event": statistics.median(added),
        "added_runs": added,
    }


async def run(db: str, single: int, batch: int, runs: int) -> dict[str, Any]:
    name = uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as directory:
        engine = make_engine(database_url(db, Path(directory)))
        shop = Shop(engine, name)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(shop.outbox.metadata.create_all)
            return {
                "db": db,
                "publish": await measure(shop, single, 1, runs),
                "publish_many": await measure(shop, batch, PER_TRANSACTION, runs),
            }
        finally:
            async with engine.begin() as connection:
                await connection.run_sync(shop.outbox.metadata.drop_all)
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("db", choices=("sqlite", "postgresql"))
    parser.add_argument("--single", type=int, default=SINGLE, help="one-row transactions/run")
    parser.add_argument("--batch", type=int, default=BATCH, help="100-row transactions/run")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    result = asyncio.run(run(args.db, args.single, args.batch, args.runs))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
