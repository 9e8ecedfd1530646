"""The outbox's promises when a relay dies: nothing committed is lost, and the only duplicates
are the rows a relay had published and not yet marked when it died.

The first test kills a real relay process with SIGKILL while it publishes into Redis Streams,
then recovers with fresh relays and reads the stream back with the raw client. The second makes
the mark statement fail once (the relay "dies" between publish and mark) and shows that exactly
that batch is published a second time, once its lease has run out.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from eventbus import Envelope, Event, EventBus
from eventbus.brokers.redis import RedisBroker
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.testing import published, wait_until

pytestmark = pytest.mark.anyio

ROWS, PER_TRANSACTION, KEYS = 3000, 100, 8
KILL_AFTER = 1000  # stream entries the victim has published when it is killed
VICTIM_BATCH = 50


class Staged(Event):
    event_type = "outbox.crash.staged"
    n: int


async def stage_all(engine: AsyncEngine, bus: EventBus) -> dict[str, list[str]]:
    """Commit ROWS events in transactions of PER_TRANSACTION; per key, the ids in staging order."""
    order: dict[str, list[str]] = collections.defaultdict(list)
    for start in range(0, ROWS, PER_TRANSACTION):
        items = [(Staged(n=n), f"k{n % KEYS}") for n in range(start, start + PER_TRANSACTION)]
        async with AsyncSession(engine) as session, session.begin():
            envelopes = await bus.publish_many(items, session=session)
        for envelope in envelopes:
            assert envelope.partitionkey is not None
            order[envelope.partitionkey].append(envelope.id)
    return order


async def stream_of(raw: aioredis.Redis, stream: str) -> list[tuple[str, str]]:
    """(event id, key) of every entry on ``stream``, in stream order."""
    entries: Any = await raw.xrange(stream)
    documents = [json.loads(fields[b"data"]) for _, fields in entries]
    return [(document["id"], document["partitionkey"]) for document in documents]


async def rows_left(engine: AsyncEngine, outbox: Outbox) -> dict[str, str | None]:
    """Event id -> lease token of every row still in the outbox table."""
    t = outbox.table
    async with engine.connect() as connection:
        rows = await connection.execute(sa.select(t.c.id, t.c.lease_token))
        return {row.id: row.lease_token for row in rows}


def first_occurrences(entries: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Per key, the ids in the order of their first appearance on the stream."""
    seen: set[str] = set()
    order: dict[str, list[str]] = collections.defaultdict(list)
    for event_id, key in entries:
        if event_id not in seen:
            seen.add(event_id)
            order[key].append(event_id)
    return order


_VICTIM = """
import asyncio, sys
from sqlalchemy.ext.asyncio import create_async_engine
from eventbus import EventBus
from eventbus.brokers.redis import RedisBroker
from eventbus.outbox import Outbox, OutboxRelay

async def main(database, table, inbox, redis_url, prefix, batch_size):
    options = {"timeout": 30} if "sqlite" in database else {}
    engine = create_async_engine(database, connect_args=options)
    outbox = Outbox(table=table, inbox=inbox)
    broker = RedisBroker(redis_url, prefix=prefix)
    async with EventBus(broker, service="victim", outbox=outbox) as bus:
        relay = OutboxRelay(engine, bus, batch_size=int(batch_size), lease=30)
        print("relaying", flush=True)
        await relay.run_once()
    print("finished: was not killed in time", flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.redis
async def test_a_relay_killed_mid_batch_loses_nothing_and_duplicates_only_its_unmarked_batch(
    engine: AsyncEngine, outbox: Outbox, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL a relay process while it publishes 3 000 committed rows into Redis; fresh relays
    (two, concurrently, on a clock past the dead relay's lease) finish the work. Every committed
    event is then on the stream; the ones there twice are exactly the rows the victim had
    published but not yet marked (still in the table under its lease when it died); and per key
    the first occurrences follow the staging (commit) order."""
    bus = EventBus(RedisBroker(redis_url, prefix=prefix), service="shop", outbox=outbox)
    raw = aioredis.Redis.from_url(redis_url)
    stream = f"{prefix}{Staged.event_type}"
    async with bus, raw:
        staged = await stage_all(engine, bus)
        committed = {event_id for ids in staged.values() for event_id in ids}
        script = tmp_path / "victim.py"
        script.write_text(_VICTIM)
        stderr = (tmp_path / "victim.err").open("wb")
        database = engine.url.render_as_string(hide_password=False)
        args = (database, outbox.table.name, outbox.inbox.name, redis_url, prefix)
        victim = await asyncio.create_subprocess_exec(
            sys.executable, str(script), *args, str(VICTIM_BATCH),
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:

            async def publishing() -> bool:
                return victim.returncode is not None or await raw.xlen(stream) >= KILL_AFTER

            await wait_until(publishing, timeout=20, message="the victim relay never published")
            assert victim.returncode is None, (tmp_path / "victim.err").read_text()
        finally:
            if victim.returncode is None:
                victim.send_signal(signal.SIGKILL)
            await victim.wait()
            stderr.close()
        assert victim.returncode == -signal.SIGKILL

        before = await stream_of(raw, stream)
        left = await rows_left(engine, outbox)
        on_stream = {event_id for event_id, _ in before}
        assert len(before) == len(on_stream), "a crash-free relay published a row twice"
        assert left, "the victim finished before it was killed: nothing was tested"
        assert on_stream | set(left) == committed, "a row left the table without being published"
        unmarked = on_stream & set(left)  # published, not marked: it died in between
        assert all(left[event_id] is not None for event_id in unmarked)
        assert len({left[event_id] for event_id in unmarked}) <= 1  # one batch, one lease
        assert len(unmarked) <= VICTIM_BATCH

        def later() -> float:  # an hour on: the dead relay's 30 s leases have run out
            return time.time() + 3600

        relays = [OutboxRelay(engine, bus, outbox=outbox, batch_size=200, now=later) for _ in "ab"]
        await asyncio.gather(*(relay.run_once() for relay in relays))
        while (await outbox.backlog(engine)).pending:  # a relay may stop on the other's key
            await relays[0].run_once()

        after = await stream_of(raw, stream)
    counts = collections.Counter(event_id for event_id, _ in after)
    assert set(counts) == committed
    duplicated = {event_id for event_id, count in counts.items() if count > 1}
    assert duplicated == unmarked
    assert all(counts[event_id] == 2 for event_id in duplicated)
    assert first_occurrences(after) == staged
    assert after[: len(before)] == before  # what the victim published stays first


# ---------------------------------------------------------------- a failed mark
class Made(Event):
    n: int


def failing_once(original: Callable[..., Any], call: int) -> Callable[..., Any]:
    """``original``, except that its ``call``-th statement is one the database refuses."""
    calls = 0

    def statement(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            return sa.text("DELETE FROM no_such_table_the_mark_fails")
        return original(*args, **kwargs)

    return statement


@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_a_mark_that_fails_after_publishing_republishes_exactly_that_batch(
    engine: AsyncEngine, outbox: Outbox, ordering: str
) -> None:
    """The relay publishes its second batch and then cannot mark it (the statement fails, as if
    it died there). That batch stays leased: nothing republishes it until the lease has run out
    (in key order the later rows of its keys wait for it); then it is published once more, and
    every other row went exactly once. First publications stay in commit order per key."""
    clock = {"now": time.time()}
    outbox.now = lambda: clock["now"]  # staging and the relay on one clock
    bus = EventBus("memory://", service="shop", outbox=outbox)
    async with bus:
        staged: list[Envelope] = []
        for start in range(0, 30, 10):
            async with AsyncSession(engine) as session, session.begin():
                items = [(Made(n=n), f"k{n % 3}") for n in range(start, start + 10)]
                staged += await bus.publish_many(items, session=session)
        relay = OutboxRelay(engine, bus, outbox=outbox, ordering=ordering, batch_size=10, lease=10)
        relay._sql.delete_published = failing_once(relay._sql.delete_published, 2)  # type: ignore[method-assign]
        with pytest.raises(sa.exc.DBAPIError):
            await relay.run_once()
        assert published(bus) == staged[:20]  # the second batch went; its mark did not
        again = await relay.run_once()  # its lease holds: not republished yet
        assert again == (0 if ordering == "key" else 10)
        clock["now"] += 11
        assert await relay.run_once() == 20 - again
        assert (await outbox.backlog(engine)).pending == 0
    counts = collections.Counter(e.id for e in published(bus))
    assert {e.id for e in staged} == set(counts)
    assert {event_id for event_id, count in counts.items() if count > 1} == {
        e.id for e in staged[10:20]
    }
    assert max(counts.values()) == 2
    firsts = first_occurrences([(e.id, e.partitionkey or "") for e in published(bus)])
    assert firsts == first_occurrences([(e.id, e.partitionkey or "") for e in staged])
