"""What the projection tests share: a read model that counts applications, in memory or in a
table, and a backend — a store with its read model — in memory, on SQLite or on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from eventbus.eventstore import EventStore, Projection, ProjectionContext, ProjectionRunner
from eventbus.eventstore.records import EventStoreProtocol, StoredEvent
from eventbus.testing._eventstore_base import Noted, Opened
from eventbus.testing.eventstore import InMemoryEventStore


class Refused(Exception):
    """What a test's failing handler raises."""


class MemoryModel:
    """One entry per application: (position, n)."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int]] = []

    async def add(self, ctx: ProjectionContext, n: int) -> None:
        self.applied.append((ctx.record.position, n))

    async def rows(self) -> list[tuple[int, int]]:
        return list(self.applied)

    def reset_hook(self, projection: Projection) -> None:
        @projection.on_reset
        async def clear() -> None:
            self.applied.clear()


class SqlModel:
    """One row per application: (position, n), in a table of the store's metadata."""

    def __init__(self, engine: AsyncEngine, metadata: sa.MetaData) -> None:
        self.engine = engine
        self.table = sa.Table(
            f"m{uuid.uuid4().hex[:10]}_applied",
            metadata,
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("position", sa.BigInteger(), nullable=False),
            sa.Column("n", sa.Integer(), nullable=False),
        )

    async def add(self, ctx: ProjectionContext, n: int) -> None:
        await ctx.session.execute(sa.insert(self.table).values(position=ctx.record.position, n=n))

    async def rows(self) -> list[tuple[int, int]]:
        t = self.table
        async with self.engine.connect() as connection:
            rows = await connection.execute(sa.select(t.c.position, t.c.n).order_by(t.c.id))
            return [(int(p), int(n)) for p, n in rows]

    def reset_hook(self, projection: Projection) -> None:
        @projection.on_reset
        async def clear(session: AsyncSession) -> None:
            await session.execute(sa.delete(self.table))


Model = MemoryModel | SqlModel


def counting(
    model: Model, name: str = "counts", fail: Callable[[StoredEvent], bool] | None = None
) -> Projection:
    """A projection adding one entry per ``Opened``; ``fail(record)`` true: it raises instead."""
    projection = Projection(name)

    @projection.on(Opened)
    async def opened(event: Opened, ctx: ProjectionContext) -> None:
        if fail is not None and fail(ctx.record):
            raise Refused(f"refusing position {ctx.record.position}")
        await model.add(ctx, event.n)

    model.reset_hook(projection)
    return projection


class Backend:
    """A store, its read model, and runners over both."""

    def __init__(self, kind: str, store: EventStoreProtocol, model: Model) -> None:
        self.kind, self.store, self.model = kind, store, model
        self.runners: list[ProjectionRunner] = []

    @property
    def transactional(self) -> bool:
        return self.kind != "memory"

    async def runner(self, projection: Projection, **options: Any) -> ProjectionRunner:
        options.setdefault("poll_interval", 0.05)
        options.setdefault("retry_delays", (0.01,))
        made = ProjectionRunner(self.store, projection, **options)
        await made.create_tables()
        self.runners.append(made)
        return made

    async def positions(self, prefix: str = "") -> list[int]:
        """The positions of the stored ``Opened`` events (of streams starting with ``prefix``)."""
        return [
            r.position
            async for r in self.store.read_all()
            if r.envelope.type == Opened.event_type and r.stream_id.startswith(prefix)
        ]

    async def applied(self) -> list[int]:
        return [position for position, _ in await self.model.rows()]


def memory_backend() -> Backend:
    return Backend("memory", InMemoryEventStore(events=[Opened]), MemoryModel())


async def sql_backend(kind: str, engine: AsyncEngine) -> Backend:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    store = EventStore(engine, events=[Opened], prefix=prefix)
    model = SqlModel(engine, store.metadata)
    async with engine.begin() as connection:
        await connection.run_sync(store.metadata.create_all)
    return Backend(kind, store, model)


__all__ = [
    "Backend",
    "MemoryModel",
    "Noted",
    "Opened",
    "Refused",
    "counting",
    "memory_backend",
    "sql_backend",
]
