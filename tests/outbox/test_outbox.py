"""The outbox on SQLite and PostgreSQL, relayed to the memory bus: what commits is published,
at least once, in commit order per key; what rolls back never is; a bad row stops nothing else."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from eventbus import BrokerUnavailable, ConfigurationError, Envelope, Event, EventBus, PublishError
from eventbus.brokers.memory import MemoryBroker
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.testing import published, wait_until

pytestmark = pytest.mark.anyio


class Made(Event):
    n: int
    text: str = ""


def bus_for(outbox: Outbox, **options: Any) -> EventBus:
    return EventBus("memory://", service="shop", outbox=outbox, **options)


def sent(bus: EventBus) -> list[tuple[str | None, int]]:
    """(key, n) of what reached the broker, in order."""
    return [(e.partitionkey, Made.model_validate_json(e.data).n) for e in published(bus)]


async def stage(
    engine: AsyncEngine, bus: EventBus, *items: tuple[int, str | None]
) -> list[Envelope]:
    async with AsyncSession(engine) as session, session.begin():
        return [await bus.publish(Made(n=n), key=key, session=session) for n, key in items]


async def test_a_commit_publishes_exactly_the_staged_envelopes(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    async def stamp(envelope: Envelope, call_next: Any) -> Envelope:
        stamped: Envelope = await call_next(envelope.replace(subject="stamped at staging"))
        return stamped

    bus = bus_for(outbox, publish_middleware=[stamp])
    async with bus:
        staged = await stage(engine, bus, (1, "a"), (2, "b"))
        async with AsyncSession(engine) as session, session.begin():
            staged += await bus.publish_many([Made(n=3), (Made(n=4), "a")], session=session)
        assert published(bus) == []  # staged, not sent
        assert await OutboxRelay(engine, bus, outbox=outbox).run_once() == 4
    assert published(bus) == staged  # the same envelopes: ids, times, attributes
    assert all(e.subject == "stamped at staging" for e in staged)
    assert (await outbox.backlog(engine)).pending == 0


async def test_a_rollback_publishes_nothing(engine: AsyncEngine, outbox: Outbox) -> None:
    bus = bus_for(outbox)
    async with bus:
        async with AsyncSession(engine) as session:
            transaction = await session.begin()
            await bus.publish(Made(n=1), session=session)
            await bus.publish_many([Made(n=2)], session=session)
            await transaction.rollback()  # the user was not saved
        await stage(engine, bus, (3, None))
        assert await OutboxRelay(engine, bus, outbox=outbox).run_once() == 1
    assert sent(bus) == [(None, 3)]


async def test_staging_needs_an_outbox_and_a_session() -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(ConfigurationError, match=r"EventBus\(\.\.\., outbox=Outbox\(\)\)"):
            await bus.publish(Made(n=1), session=object())
    async with EventBus("memory://", outbox=Outbox()) as bus:
        with pytest.raises(ConfigurationError, match="AsyncSession"):
            await bus.publish(Made(n=1), session=object())


async def test_staging_refuses_what_the_broker_would(engine: AsyncEngine, outbox: Outbox) -> None:
    bus = bus_for(outbox, max_message_bytes=100)
    async with bus, AsyncSession(engine) as session, session.begin():
        with pytest.raises(PublishError, match="max_message_bytes"):
            await bus.publish(Made(n=1, text="x" * 200), session=session)


async def test_a_slow_transaction_is_published_after_a_later_one_never_skipped(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    bus = bus_for(outbox)
    relay = OutboxRelay(engine, bus, outbox=outbox)
    async with bus:
        slow = AsyncSession(engine)
        await slow.begin()
        await bus.publish(Made(n=1), key="a", session=slow)  # position 1, not committed
        if engine.dialect.name == "postgresql":  # SQLite has one writer: it would wait
            await stage(engine, bus, (2, "b"))
            assert await relay.run_once() == 1
        await slow.commit()
        await slow.close()
        await stage(engine, bus, (3, "a"))
        assert await relay.run_once() >= 2
    expected = {("a", 1), ("a", 3)} | ({("b", 2)} if engine.dialect.name == "postgresql" else set())
    assert set(sent(bus)) == expected
    assert [n for key, n in sent(bus) if key == "a"] == [1, 3]


async def waiting_for_a_lock(engine: AsyncEngine) -> bool:
    """Some session of this database waits for an advisory lock."""
    waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    async with engine.connect() as connection:
        return bool((await connection.execute(waiting)).scalar())


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)  # SQLite: one writer
async def test_rows_of_one_key_are_published_in_commit_order(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    """Two transactions stage the same key; the one that commits first is published first."""
    bus = bus_for(outbox)
    async with bus:
        first, second = AsyncSession(engine), AsyncSession(engine)
        await first.begin()
        await second.begin()
        await first.execute(sa.select(1))
        await bus.publish(Made(n=1), key="k", session=first)
        staging = asyncio.ensure_future(bus.publish(Made(n=2), key="k", session=second))
        await wait_until(lambda: waiting_for_a_lock(engine), message="staging did not wait")
        assert not staging.done(), "the second transaction must wait for the first's key"
        await first.commit()
        await staging
        await second.commit()
        for session in (first, second):
            await session.close()
        await OutboxRelay(engine, bus, outbox=outbox).run_once()
    assert sent(bus) == [("k", 1), ("k", 2)]


@pytest.mark.parametrize("relays", [2, 4])
@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_concurrent_relays_publish_every_row_once(
    engine: AsyncEngine, outbox: Outbox, relays: int, ordering: str
) -> None:
    bus = bus_for(outbox)
    async with bus:
        for batch in range(10):
            await stage(engine, bus, *[(batch * 20 + i, f"k{i % 5}") for i in range(20)])
        workers = [
            OutboxRelay(engine, bus, outbox=outbox, ordering=ordering, batch_size=7)
            for _ in range(relays)
        ]
        counts = await asyncio.gather(*(w.run_once() for w in workers))
        while (await outbox.backlog(engine)).pending:  # a relay may stop on another's key
            counts.append(await workers[0].run_once())
    assert sum(counts) == 200
    assert sorted(n for _, n in sent(bus)) == list(range(200))  # every row, each once
    if ordering == "key":
        for key in {k for k, _ in sent(bus)}:
            numbers = [n for k, n in sent(bus) if k == key]
            assert numbers == sorted(numbers), f"key {key} out of order"


async def test_a_relay_that_died_loses_its_lease_and_changes_nothing_after(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    clock = {"now": time.time()}
    now = outbox.now = lambda: clock["now"]  # staging and relays on one clock
    bus = bus_for(outbox)
    async with bus:
        await stage(engine, bus, (1, "a"), (2, "a"))
        dead = OutboxRelay(engine, bus, outbox=outbox, lease=10, now=now)
        async with engine.begin() as connection:  # it claims, then dies before publishing
            claim, parameters = dead._sql.claim("dead-relay", now(), now() + 10, 10, None)
            assert len((await connection.execute(claim, parameters)).fetchall()) == 2
        alive = OutboxRelay(engine, bus, outbox=outbox, lease=10, now=now)
        assert await alive.run_once() == 0  # leased: not taken
        clock["now"] += 11
        assert await alive.run_once() == 2
        async with engine.begin() as connection:  # the late writes of the dead relay
            result = await connection.execute(dead._sql.delete_published("dead-relay", [1, 2]))
            assert result.rowcount == 0
    assert sent(bus) == [("a", 1), ("a", 2)]


async def test_a_poison_row_is_retried_then_dead_and_stops_only_its_key(
    engine: AsyncEngine, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    clock = {"now": time.time()}
    outbox.now = lambda: clock["now"]  # staging and the relay on one clock
    bus = bus_for(outbox)
    async with bus:
        await stage(engine, bus, (1, "poison"), (2, "poison"), (3, "fine"), (4, None))
        async with engine.begin() as connection:  # row 1 is refused by the broker: too large
            await connection.execute(
                sa.update(outbox.table)
                .where(outbox.table.c.position == 1)
                .values(payload=b'{"n":1,"text":"' + b"x" * 2_000_000 + b'"}')
            )
        relay = OutboxRelay(engine, bus, outbox=outbox, max_attempts=2, retry_delays=(5,))
        with caplog.at_level(logging.WARNING, logger="eventbus.outbox"):
            assert await relay.run_once() == 2  # the others go; row 2 waits behind row 1
            assert (await outbox.backlog(engine)).held_keys == 1  # visibly
            clock["now"] += 6
            assert await relay.run_once() == 0  # the second and last attempt: dead
        assert set(sent(bus)) == {("fine", 3), (None, 4)}
        assert "failed attempt 1" in caplog.text
        assert "failed its last attempt and is dead (key 'poison': its later rows" in caplog.text
        backlog = await outbox.backlog(engine)
        assert (backlog.pending, backlog.dead, backlog.held_keys) == (1, 1, 1)
        dead = outbox.dead_letters(engine)
        [record] = await dead.list()
        assert record.attempts == 2
        assert "max_message_bytes" in record.error_message
        assert record.group == "outbox"
        async with engine.begin() as connection:  # fixed by hand: the payload is fine again
            await connection.execute(
                sa.update(outbox.table)
                .where(outbox.table.c.position == 1)
                .values(payload=b'{"n":1}')
            )
        await dead.replay(record.id)
        assert await relay.run_once() == 2
        assert (await outbox.backlog(engine)).held_keys == 0
    assert [n for key, n in sent(bus) if key == "poison"] == [1, 2]
    assert await dead.list() == []


async def test_a_row_whose_headers_cannot_be_read_is_dead_and_stops_only_its_key(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    bus = bus_for(outbox)
    async with bus:
        await stage(engine, bus, (1, "broken"), (2, "broken"), (3, "fine"))
        async with engine.begin() as connection:  # say, edited by hand and cut short
            await connection.execute(
                sa.update(outbox.table)
                .where(outbox.table.c.position == 1)
                .values(headers='{"ce_id": "1", "ce_sou')
            )
        relay = OutboxRelay(engine, bus, outbox=outbox, max_attempts=1)
        assert await relay.run_once() == 1
        assert sent(bus) == [("fine", 3)]
        [record] = await outbox.dead_letters(engine).list()
        assert "the staged row cannot be read: the stored headers column is not valid JSON" in (
            record.error_message
        )
        assert (record.body, record.headers) == (b'{"n":1,"text":""}', {})
        backlog = await outbox.backlog(engine)
        assert (backlog.pending, backlog.dead, backlog.held_keys) == (1, 1, 1)


async def test_published_rows_can_be_kept_for_a_retention(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    clock = {"now": time.time()}
    outbox.now = lambda: clock["now"]  # staging and the relay on one clock
    bus = bus_for(outbox)
    async with bus:
        await stage(engine, bus, (1, None))
        relay = OutboxRelay(engine, bus, outbox=outbox, retention=60, now=lambda: clock["now"])
        assert await relay.run_once() == 1
        count = sa.select(sa.func.count()).select_from(outbox.table)
        async with engine.connect() as connection:
            assert (await connection.execute(count)).scalar() == 1
        clock["now"] += 61
        await stage(engine, bus, (2, None))
        assert await relay.run_once() == 1
        async with engine.connect() as connection:
            assert (await connection.execute(count)).scalar() == 1  # the first one went


async def test_a_background_relay_publishes_soon_after_a_commit(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    """On PostgreSQL the commit wakes the relay (its poll interval here is a minute)."""
    interval = 60.0 if engine.dialect.name == "postgresql" else 0.05
    bus = bus_for(outbox)
    async with bus, OutboxRelay(engine, bus, outbox=outbox, poll_interval=interval) as relay:
        await wait_until(lambda: relay.rounds >= 1)  # it looked, found nothing: now it waits
        await stage(engine, bus, (1, None))
        await wait_until(lambda: len(published(bus)) == 1, timeout=5)


async def test_the_relay_takes_only_an_outbox(engine: AsyncEngine) -> None:
    async with EventBus("memory://") as bus:
        with pytest.raises(ConfigurationError, match="OutboxRelay needs the Outbox"):
            OutboxRelay(engine, bus)
        with pytest.raises(ConfigurationError, match="ordering must be"):
            OutboxRelay(engine, bus, outbox=Outbox(), ordering="fifo")


async def test_an_unreachable_broker_is_not_the_rows_fault(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    class Down(MemoryBroker):
        outage = 1

        async def publish_batch(self, messages: Any) -> None:
            if self.outage:
                self.outage -= 1
                raise BrokerUnavailable("the broker is restarting")
            await super().publish_batch(messages)

    bus = EventBus(Down(), service="shop", outbox=outbox)
    async with bus:
        await stage(engine, bus, (1, "a"))
        relay = OutboxRelay(engine, bus, outbox=outbox)
        with pytest.raises(BrokerUnavailable):
            await relay.run_once()
        async with engine.connect() as connection:
            row = (await connection.execute(sa.select(outbox.table))).one()
        assert (row.attempts, row.lease_token) == (0, None)  # given back untried, at once
        assert await relay.run_once() == 1
    assert sent(bus) == [("a", 1)]
