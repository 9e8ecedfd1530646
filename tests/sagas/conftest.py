"""Fixtures for the saga tests on SQL: the outbox tests' engine (SQLite always, PostgreSQL on
the real server) and outbox, and saga tables of this test alone on the outbox's metadata
(dropped with it)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.outbox import Outbox
from eventbus.sagas import SqlSagaStore
from tests.outbox.conftest import engine, outbox

__all__ = ["engine", "outbox", "store"]


@pytest.fixture
async def store(engine: AsyncEngine, outbox: Outbox) -> SqlSagaStore:
    name = uuid.uuid4().hex[:10]
    made = SqlSagaStore(engine, outbox=outbox, table=f"sagas_{name}", timers=f"timers_{name}")
    await made.create_tables()
    return made
