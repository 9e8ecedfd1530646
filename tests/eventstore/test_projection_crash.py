"""A projection process killed with SIGKILL resumes without applying anything twice or
skipping anything: its read model and its checkpoint commit together.

The victim (:mod:`tests.eventstore.crashing`, a real subprocess) writes one row per event it
applies. Killed inside a batch, or at whatever moment it has reached under load, the rows
committed are exactly the events up to the committed checkpoint; a fresh runner then applies
the rest, and every event has exactly one row.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.eventstore import EventStore, ProjectionRunner
from eventbus.testing import wait_until
from eventbus.testing._eventstore_base import Opened
from tests.eventstore.conftest import drop, new_store
from tests.eventstore.crashing import applied_table, applying

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]


@pytest.fixture
async def crash_store(engine: AsyncEngine) -> AsyncIterator[EventStore]:
    store = await new_store(engine, [Opened])
    ProjectionRunner(store, applying(applied_table(store)))  # its checkpoints table, too
    async with engine.begin() as connection:
        await connection.run_sync(store.metadata.create_all)
    yield store
    await drop(engine, store)


async def append(store: EventStore, count: int) -> list[int]:
    for start in range(0, count, 50):
        events = [Opened(n=n) for n in range(start, min(start + 50, count))]
        await store.append(f"s-{start // 50 % 4}", events, expected_version=None)
    return [r.position async for r in store.read_all()]


async def applied_rows(store: EventStore) -> list[int]:
    t = applied_table(store)
    async with store.engine.connect() as connection:
        return list((await connection.execute(sa.select(t.c.position).order_by(t.c.id))).scalars())


async def victim(store: EventStore, hang_at: int, batch_size: int) -> asyncio.subprocess.Process:
    url = store.engine.url.render_as_string(hide_password=False)
    prefix = store.table.name.removesuffix("events")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.eventstore.crashing", url, prefix, str(hang_at),
        str(batch_size), stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL, "the victim ended before it was killed"


async def resume(store: EventStore) -> ProjectionRunner:
    runner = ProjectionRunner(store, applying(applied_table(store)), batch_size=40)
    await runner.run_once()
    return runner


async def test_a_projection_killed_inside_a_batch_resumes_without_applying_twice(
    crash_store: EventStore,
) -> None:
    """Batches of 10; the victim hangs inside its third batch, having written rows for
    part of it, and is killed there. What is committed is the first two batches, rows and
    checkpoint alike; the fresh runner applies the rest: one row per event."""
    store = crash_store
    positions = await append(store, 100)
    process = await victim(store, hang_at=positions[24], batch_size=10)
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"running\n"
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"hanging\n"
    finally:
        await kill(process)
    runner = ProjectionRunner(store, applying(applied_table(store)))
    assert await runner.checkpoints.load("crash") == positions[19]
    assert await applied_rows(store) == positions[:20]
    await resume(store)
    assert await applied_rows(store) == positions


@pytest.mark.slow
async def test_a_projection_killed_at_any_moment_resumes_without_applying_twice(
    crash_store: EventStore,
) -> None:
    """The victim applies 3 000 events in batches of 20 and is killed once it has committed
    a few batches, wherever it is then (in a handler, a read, a commit). The rows committed are
    the events up to the checkpoint committed, no more, no fewer; resumed, one row per event."""
    store = crash_store
    positions = await append(store, 3000)
    process = await victim(store, hang_at=0, batch_size=20)
    try:

        async def progressed() -> bool:
            return process.returncode is not None or len(await applied_rows(store)) >= 100

        await wait_until(progressed, timeout=60, message="the victim applied nothing")
    finally:
        await kill(process)
    checkpoint = await ProjectionRunner(store, applying(applied_table(store))).checkpoints.load(
        "crash"
    )
    rows = await applied_rows(store)
    assert len(rows) < len(positions), "the victim finished before it was killed"
    assert rows == [p for p in positions if p <= checkpoint]
    await resume(store)
    assert await applied_rows(store) == positions
