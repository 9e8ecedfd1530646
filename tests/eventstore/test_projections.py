"""Projections on every backend (in memory, SQLite, PostgreSQL): each event applied once, in
commit order; following; read-your-writes; lag; rebuild; a failing handler never skips."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eventbus import ConfigurationError, Event
from eventbus.eventstore import Projection, ProjectionContext, StoredEvent
from eventbus.testing import wait_until
from eventbus.testing.eventstore import InMemoryEventStore
from eventbus.upcasting import Upcasters
from tests.eventstore.conftest import postgres_engine, sqlite_engine
from tests.eventstore.projectionsupport import (
    Backend,
    MemoryModel,
    Noted,
    Opened,
    Refused,
    counting,
    memory_backend,
    sql_backend,
)

pytestmark = pytest.mark.anyio


async def make_backend(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> AsyncIterator[Backend]:
    if kind == "memory":
        yield memory_backend()
        return
    if kind == "sqlite":
        engine = sqlite_engine(tmp_path)
    else:
        engine = postgres_engine(request.getfixturevalue("postgres_url"))
    made = await sql_backend(kind, engine)
    try:
        yield made
    finally:
        for runner in made.runners:
            await runner.stop()
        store = made.store
        async with engine.begin() as connection:
            await connection.run_sync(store.metadata.drop_all)  # type: ignore[attr-defined]
        await engine.dispose()


POSTGRES = pytest.param("postgresql", marks=pytest.mark.postgres)


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for made in make_backend(request, request.param, tmp_path):
        yield made


@pytest.fixture(params=["sqlite", POSTGRES])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A backend with transactions: checkpoints in a table several runners share."""
    async for made in make_backend(request, request.param, tmp_path):
        yield made


async def append_each(backend: Backend, numbers: range, stream: str = "s") -> None:
    for n in numbers:
        await backend.store.append(f"{stream}-{n % 3}", [Opened(n=n)], expected_version=None)


async def test_every_event_is_applied_once_in_commit_order(backend: Backend) -> None:
    """Ten events over three streams, with events the projection does not handle between
    them, in batches of three: each handled event once, in feed order, and the checkpoint at
    the last position read, handled or not."""
    for n in range(10):
        await backend.store.append(f"s-{n % 3}", [Opened(n=n)], expected_version=None)
        await backend.store.append("notes", [Noted(note=str(n))], expected_version=None)
    runner = await backend.runner(counting(backend.model), batch_size=3)
    assert await runner.run_once() == 20
    assert [n for _, n in await backend.model.rows()] == list(range(10))
    assert await backend.applied() == await backend.positions()
    last = [r async for r in backend.store.read_all()][-1].position
    assert runner.position == last
    assert await runner.run_once() == 0  # caught up: nothing again
    assert len(await backend.applied()) == 10


async def test_a_running_projection_catches_up_then_follows_new_appends(backend: Backend) -> None:
    await append_each(backend, range(5))
    async with await backend.runner(counting(backend.model), batch_size=2) as runner:
        await runner.wait_for()
        assert [n for _, n in await backend.model.rows()] == list(range(5))
        await append_each(backend, range(5, 12))
        reached = await runner.wait_for()  # read-your-writes: the appends above are in
        assert [n for _, n in await backend.model.rows()] == list(range(12))
        assert reached == runner.position == (await backend.positions())[-1]
        await append_each(backend, range(12, 14))  # found by polling, without wait_for
        head = (await backend.positions())[-1]
        await wait_until(lambda: runner.position == head, timeout=10)
    assert await backend.applied() == await backend.positions()
    await append_each(backend, range(14, 16))  # stopped, it still runs when asked to
    assert await runner.run_once() == 2
    assert await backend.applied() == await backend.positions()


async def test_wait_for_a_position_not_reached_says_where_the_projection_is(
    backend: Backend,
) -> None:
    await append_each(backend, range(3))
    runner = await backend.runner(counting(backend.model))
    await runner.run_once()
    with pytest.raises(TimeoutError, match=rf"up to position {runner.position}, not yet up to"):
        await runner.wait_for(runner.position + 1, timeout=0.05)
    assert await runner.wait_for(runner.position, timeout=0.05) == runner.position


async def test_lag_counts_the_events_after_the_checkpoint(backend: Backend) -> None:
    runner = await backend.runner(counting(backend.model), batch_size=2)
    assert await runner.lag() == 0
    await append_each(backend, range(5))
    await backend.store.append("notes", [Noted(note="x")], expected_version=None)
    assert await runner.lag() == 6  # events behind, handled or not
    await runner.run_once()
    assert await runner.lag() == 0
    await append_each(backend, range(2))
    assert await runner.lag() == 2


async def test_rebuild_clears_the_read_model_and_applies_everything_again(
    backend: Backend,
) -> None:
    await append_each(backend, range(6))
    runner = await backend.runner(counting(backend.model), batch_size=4)
    await runner.run_once()
    await runner.rebuild()
    assert await backend.model.rows() == []
    assert runner.position == 0
    assert await runner.lag() == 6
    await runner.run_once()
    assert await backend.applied() == await backend.positions()


async def test_a_rebuild_while_running_ends_with_every_event_once(backend: Backend) -> None:
    await append_each(backend, range(30))
    async with await backend.runner(counting(backend.model), batch_size=4) as runner:
        await wait_until(lambda: runner.position > 0, timeout=10)
        await runner.rebuild()
        await append_each(backend, range(30, 35))
        await runner.wait_for()
    assert await backend.applied() == await backend.positions()


async def test_a_failing_handler_holds_the_projection_on_its_event_and_never_skips_it(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler refuses the 5th event until it is fixed. The events before it are applied
    (the failed one is retried in a transaction of its own), the checkpoint stops right before
    it, ``failure`` names it, the log says so; once fixed, everything after follows, each
    event once."""
    await append_each(backend, range(10))
    positions = await backend.positions()
    poison = positions[4]
    broken = {"yes": True}
    projection = counting(backend.model, fail=lambda r: broken["yes"] and r.position == poison)
    caplog.set_level(logging.ERROR, "eventbus.eventstore")
    async with await backend.runner(projection, batch_size=3) as runner:
        await wait_until(lambda: runner.failure is not None and runner.failure.attempts >= 3)
        assert runner.position == positions[3]
        assert await backend.applied() == positions[:4]
        failure = runner.failure
        assert failure is not None
        assert failure.record is not None
        assert failure.record.position == poison
        assert isinstance(failure.error, Refused)
        assert f"at position {poison}" in caplog.text
        assert "Refused" in caplog.text
        with pytest.raises(TimeoutError, match=f"failed .* at position {poison}"):
            await runner.wait_for(timeout=0.05)
        broken["yes"] = False
        await runner.wait_for()
        assert runner.failure is None
    assert await backend.applied() == positions


async def test_run_once_raises_the_handlers_error_and_keeps_the_checkpoint(
    backend: Backend,
) -> None:
    """In a transaction the whole batch rolls back; in memory the checkpoint moves event by
    event, so it stops right before the failed one. Either way, nothing is applied twice."""
    await append_each(backend, range(6))
    positions = await backend.positions()
    calls = {"n": 0}

    def fail_once(record: object) -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    runner = await backend.runner(counting(backend.model, fail=fail_once), batch_size=4)
    with pytest.raises(Refused):
        await runner.run_once()
    expected = 0 if backend.transactional else positions[1]
    assert runner.position == expected
    assert await backend.applied() == [p for p in positions if p <= expected]
    assert runner.failure is not None
    assert runner.failure.record is not None
    assert runner.failure.record.position == positions[2]
    await runner.run_once()
    assert await backend.applied() == positions
    assert runner.failure is None


async def test_an_event_of_a_handled_type_in_an_unknown_dataversion_blocks(
    backend: Backend,
) -> None:
    class OpenedV2(Event):
        event_type = Opened.event_type
        event_version = 2
        n: int

    projection = Projection("v2")
    seen: list[int] = []

    @projection.on(OpenedV2)
    async def opened(event: OpenedV2) -> None:
        seen.append(event.n)

    await append_each(backend, range(2))
    runner = await backend.runner(projection)
    with pytest.raises(ConfigurationError, match="not dataversion 1"):
        await runner.run_once()
    assert runner.position == 0
    assert seen == []


async def test_older_events_go_through_the_projections_upcasters(backend: Backend) -> None:
    """The stored version 1 events reach the version 2 handler upcast; one is split in two
    and one dropped, and the checkpoint moves past all of them."""

    class OpenedV2(Event):
        event_type = Opened.event_type
        event_version = 2
        n: int
        doubled: int

    upcasters = Upcasters()

    @upcasters.register(OpenedV2, from_version=1)
    def double(data: dict[str, Any]) -> list[dict[str, Any]]:
        n = data["n"]
        return [] if n == 0 else [{"n": n, "doubled": 2 * n}] * (2 if n == 2 else 1)

    projection = Projection("upcast", upcasters=upcasters)
    seen: list[tuple[int, int]] = []

    @projection.on(OpenedV2)
    async def opened(event: OpenedV2) -> None:
        seen.append((event.n, event.doubled))

    await append_each(backend, range(3))
    runner = await backend.runner(projection)
    await runner.run_once()
    assert seen == [(1, 2), (2, 4), (2, 4)]
    assert runner.position == [r.position async for r in backend.store.read_all()][-1]


async def test_many_writers_while_the_projection_follows(backend: Backend) -> None:
    """Eight writers append concurrently (one to three events at a time, each to streams
    of its own: the feed interleaves them) while the projection follows in small batches:
    every event applied exactly once, in the feed's order."""

    async def writer(w: int) -> None:
        for i in range(15):
            events = [Opened(n=w * 1000 + i * 10 + k) for k in range(1 + (w + i) % 3)]
            await backend.store.append(f"w{w}-{i % 2}", events, expected_version=None)

    async with await backend.runner(counting(backend.model), batch_size=7) as runner:
        await asyncio.gather(*(writer(w) for w in range(8)))
        await runner.wait_for(timeout=30)
    positions = await backend.positions()
    assert len(positions) == sum(1 + (w + i) % 3 for w in range(8) for i in range(15))
    assert await backend.applied() == positions


async def test_two_runners_of_one_projection_take_turns(database: Backend) -> None:
    """Two processes running the same projection (two runners on one checkpoint table):
    they lock the checkpoint in turn, and each event is applied once."""
    backend = database
    await append_each(backend, range(40))
    projection = counting(backend.model)
    first = await backend.runner(projection, batch_size=3)
    second = await backend.runner(projection, batch_size=5)
    await asyncio.gather(first.run_once(), second.run_once(), first.run_once())
    assert await backend.applied() == await backend.positions()


async def test_a_runner_that_is_not_running_waits_for_another_ones_checkpoint(
    database: Backend,
) -> None:
    """A web process waits for the projection a worker process runs (read-your-writes
    across processes): its own runner is not started and reads the committed checkpoint."""
    backend = database
    projection = counting(backend.model)
    reader = await backend.runner(projection)
    async with await backend.runner(projection):
        await append_each(backend, range(4))
        reached = await reader.wait_for()
    assert reached == (await backend.positions())[-1]
    assert len(await backend.applied()) == 4


# ---------------------------------------------------------------- the projection's own rules
def test_a_handler_must_be_async_and_take_the_event_and_maybe_ctx() -> None:
    projection = Projection("rules")
    with pytest.raises(ConfigurationError, match="async def"):
        projection.on(Opened)(lambda event: None)  # type: ignore[type-var]

    async def three(event: Opened, ctx: ProjectionContext, extra: int) -> None: ...

    with pytest.raises(ConfigurationError, match=r"must take \(event\) or \(event, ctx\)"):
        projection.on(Opened)(three)
    with pytest.raises(ConfigurationError, match="Event subclass"):
        projection.on(int)  # type: ignore[arg-type]

    async def first(event: Opened) -> None: ...

    async def second(event: Opened) -> None: ...

    projection.on(Opened)(first)
    with pytest.raises(ConfigurationError, match="twice"):
        projection.on(Opened)(second)
    assert projection.event_types == {Opened.event_type}
    with pytest.raises(ConfigurationError, match="name"):
        Projection("")


async def test_in_memory_there_is_no_session() -> None:
    backend = memory_backend()
    projection = Projection("sessions")

    @projection.on(Opened)
    async def opened(event: Opened, ctx: ProjectionContext) -> None:
        await ctx.session.execute(sa.text("SELECT 1"))

    await append_each(backend, range(1))
    runner = await backend.runner(projection)
    with pytest.raises(ConfigurationError, match="no session"):
        await runner.run_once()

    @projection.on_reset
    async def clear(session: object) -> None: ...

    with pytest.raises(ConfigurationError, match="takes a session"):
        await runner.rebuild()


class FlakyStore(InMemoryEventStore):
    """Its feed fails while ``down`` is true, as a store whose database went away."""

    down = True

    async def read_all(
        self, after: int = 0, *, limit: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        if self.down:
            raise OSError("connection refused")
        async for record in super().read_all(after, limit=limit):
            yield record


async def test_a_failure_outside_the_handlers_is_retried_until_it_passes() -> None:
    store = FlakyStore(events=[Opened])
    backend = Backend("memory", store, MemoryModel())
    await append_each(backend, range(3))
    async with await backend.runner(counting(backend.model)) as runner:
        await wait_until(lambda: runner.failure is not None and runner.failure.attempts >= 2)
        assert runner.failure is not None
        assert runner.failure.record is None
        assert "outside the handlers" in str(runner.failure)
        store.down = False
        await runner.wait_for()
        assert runner.failure is None
    assert await backend.applied() == await backend.positions()
