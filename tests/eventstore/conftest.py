"""Fixtures for the event-store tests: an engine on SQLite (always) or PostgreSQL (the real
server: under CI a missing server fails the test), and helpers that make a store whose table
is this test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus.event import Event
from eventbus.eventstore import EventStore
from eventbus.testing._eventstore_base import Opened


def sqlite_engine(folder: Path) -> AsyncEngine:
    return create_async_engine(
        f"sqlite+aiosqlite:///{folder / 'events.sqlite3'}", connect_args={"timeout": 30}
    )


def postgres_engine(url: str) -> AsyncEngine:
    return create_async_engine(url, pool_size=10, max_overflow=10)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        made = sqlite_engine(tmp_path)
    else:
        made = postgres_engine(request.getfixturevalue("postgres_url"))
    yield made
    await made.dispose()


async def new_store(
    engine: AsyncEngine, events: Iterable[type[Event]] = (), service: str = "app"
) -> EventStore:
    """A store on a table of its own (``t<random>_events``), created."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    store = EventStore(engine, service=service, events=events, prefix=prefix)
    await store.create_tables()
    return store


async def drop(engine: AsyncEngine, store: EventStore) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(store.metadata.drop_all)


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[EventStore]:
    made = await new_store(engine, [Opened])
    yield made
    await drop(engine, made)
