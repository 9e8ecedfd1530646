"""A projection process to kill: ``python -m tests.eventstore.crashing URL PREFIX HANG_AT BATCH``.

It applies the store's events into ``{prefix}applied``, one row per application (so a
double application shows as two rows). With ``HANG_AT`` a position, the handler of that event
writes its row, prints ``hanging``, and waits forever inside the open batch transaction: the
test kills it there. With ``HANG_AT`` 0 it runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus.eventstore import EventStore, Projection, ProjectionContext, ProjectionRunner
from eventbus.testing._eventstore_base import Opened


def applied_table(store: EventStore) -> sa.Table:
    name = store.table.name.removesuffix("events") + "applied"
    if name in store.metadata.tables:
        return store.metadata.tables[name]
    return sa.Table(
        name,
        store.metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
    )


def applying(table: sa.Table, hang_at: int = 0) -> Projection:
    projection = Projection("crash")

    @projection.on(Opened)
    async def opened(event: Opened, ctx: ProjectionContext) -> None:
        await ctx.session.execute(sa.insert(table).values(position=ctx.record.position, n=event.n))
        if ctx.record.position == hang_at:
            print("hanging", flush=True)
            await asyncio.Event().wait()

    return projection


def engine_for(url: str) -> AsyncEngine:
    return create_async_engine(url, connect_args={"timeout": 30} if "sqlite" in url else {})


async def main(url: str, prefix: str, hang_at: str, batch_size: str) -> None:
    engine = engine_for(url)
    store = EventStore(engine, events=[Opened], prefix=prefix)
    projection = applying(applied_table(store), int(hang_at))
    runner = ProjectionRunner(store, projection, batch_size=int(batch_size))
    print("running", flush=True)
    await runner.run_once()
    print("finished: was not killed in time", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
