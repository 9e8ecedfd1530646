"""Fixtures for the saga tests on SQL: an engine on SQLite (always) or PostgreSQL (the real
server), and the outbox, inbox and saga tables of this test alone, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus.outbox import Outbox
from eventbus.sagas import SqlSagaStore


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}"
        made = create_async_engine(url, connect_args={"timeout": 30})
    else:
        made = create_async_engine(request.getfixturevalue("postgres_url"), pool_size=10)
    yield made
    await made.dispose()


@pytest.fixture
async def outbox(engine: AsyncEngine) -> AsyncIterator[Outbox]:
    name = uuid.uuid4().hex[:10]
    made = Outbox(table=f"outbox_{name}", inbox=f"inbox_{name}")
    await made.create_tables(engine)
    yield made
    async with engine.begin() as connection:
        await connection.run_sync(made.metadata.drop_all)


@pytest.fixture
async def store(engine: AsyncEngine, outbox: Outbox) -> SqlSagaStore:
    """Saga tables on the outbox's metadata: the outbox fixture drops them too."""
    name = uuid.uuid4().hex[:10]
    made = SqlSagaStore(engine, outbox=outbox, table=f"sagas_{name}", timers=f"timers_{name}")
    await made.create_tables()
    return made
