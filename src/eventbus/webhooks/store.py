"""``WebhookStore``: the endpoints, the deliveries and their log, in one SQL database.

SQLite (``sqlite+aiosqlite``) and PostgreSQL (``postgresql+asyncpg``) are supported; give
an ``AsyncEngine``, or a URL (the store then owns its engine: :meth:`WebhookStore.close`). Add
``store.metadata`` to your Alembic ``target_metadata`` to migrate the tables, or call
:meth:`WebhookStore.create_tables`. Times are wall-clock seconds since the epoch from ``now``
(injectable: a test passes a ``FakeClock``'s ``now``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.webhooks.deliveries import Deliveries
from eventbus.webhooks.endpoints import Endpoints
from eventbus.webhooks.schema import Tables

__all__ = ["WebhookStore"]


class WebhookStore:
    """``store.endpoints`` registers and manages endpoints; ``store.deliveries`` is the
    delivery log (attempts, replays, dead letters); :meth:`take` turns an event into one
    delivery per matching endpoint."""

    def __init__(
        self,
        engine: AsyncEngine | str,
        *,
        prefix: str = "eventbus_webhook",
        metadata: sa.MetaData | None = None,
        schema: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        engine = create_async_engine(engine) if isinstance(engine, str) else engine
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"webhooks are stored on PostgreSQL or SQLite, not {engine.dialect.name}"
            )
        self.engine, self.now = engine, now
        self.metadata = metadata if metadata is not None else sa.MetaData()
        self.tables = Tables(self.metadata, prefix, schema)
        self.channel = f"{prefix}_due"
        """The PostgreSQL ``NOTIFY`` channel on which a commit of due deliveries wakes senders."""
        self.endpoints = Endpoints(engine, self.tables, now, self.channel)
        self.deliveries = Deliveries(engine, self.tables, now, self.channel)

    async def close(self) -> None:
        """Dispose of the engine when the store made it (it was given a URL)."""
        if self._owns_engine:
            await self.engine.dispose()

    async def create_tables(self) -> None:
        """Create the three tables (and their indexes) if they do not exist."""
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all, tables=self.tables.all)

    async def drop_tables(self) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.drop_all, tables=self.tables.all)

    async def take(self, envelope: Envelope, *, connection: AsyncConnection | None = None) -> int:
        """One pending delivery per endpoint whose event types match ``envelope.type``
        (disabled ones included: theirs wait until they are enabled); how many are new."""
        endpoints = await self.endpoints.matching(envelope.type)
        return await self.deliveries.enqueue(envelope, endpoints, connection=connection)
