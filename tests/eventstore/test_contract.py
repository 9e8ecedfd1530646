"""The event-store conformance suite on the in-memory store, and on the SQL store on SQLite
and on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.event import Event
from eventbus.eventstore import EventStore, EventStoreProtocol
from eventbus.testing.eventstore import EventStoreContract, InMemoryEventStore
from tests.eventstore.conftest import drop, new_store, postgres_engine, sqlite_engine


class TestInMemoryContract(EventStoreContract):
    async def make_store(self, events: Sequence[type[Event]]) -> EventStoreProtocol:
        return InMemoryEventStore(service="contract", events=events)


class SqlContract(EventStoreContract):
    engine: AsyncEngine

    async def make_store(self, events: Sequence[type[Event]]) -> EventStoreProtocol:
        return await new_store(self.engine, events, service="contract")

    async def dispose_store(self, store: EventStoreProtocol) -> None:
        assert isinstance(store, EventStore)
        await drop(self.engine, store)


class TestSqliteContract(SqlContract):
    @pytest.fixture(autouse=True)
    async def _engine(self, tmp_path: Path) -> AsyncIterator[None]:
        self.engine = sqlite_engine(tmp_path)
        yield
        await self.engine.dispose()


class TestPostgresContract(SqlContract):
    pytestmark: ClassVar[Any] = [pytest.mark.anyio, pytest.mark.postgres]

    @pytest.fixture(autouse=True)
    async def _engine(self, postgres_url: str) -> AsyncIterator[None]:
        self.engine = postgres_engine(postgres_url)
        yield
        await self.engine.dispose()
