"""Random interleavings of staging, commits, rollbacks, relay rounds and relay crashes.

Invariant: every committed event is published at least once; nothing rolled back (or still
uncommitted) ever is; a duplicate is only ever a row that a crashed relay had published and not
marked; and in ordered mode, per key, the first publications follow commit order. Relays crash
between publishing part of a batch and marking it, which leaves their rows leased; time only
moves when a rule advances the clock past a lease.

SQLite allows one writing transaction at a time, so there at most one is open; on PostgreSQL
several are open at once (a later one may commit first, the case that defeats "id greater than
the last seen"), each on keys no other open transaction holds, since staging waits for the
key's lock until the holder ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import tempfile
import time
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from eventbus import Envelope, Event, EventBus
from eventbus.brokers.memory import MemoryBroker
from eventbus.outbox import Outbox, OutboxRelay

T = TypeVar("T")
KEYS = ("a", "b", "c")
LEASE = 30.0


class Staged(Event):
    n: int


class Killed(Exception):
    """The relay process dies: nothing after this point of its round happens."""


class Recording(MemoryBroker):
    """The memory broker, keeping everything it was sent; ``crash_after`` makes the next batch
    send that many messages and then kill its relay."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Envelope] = []
        self.crash_after: int | None = None
        self.in_crash: list[str] = []
        self.crashed_batch: list[str] = []

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        if self.crash_after is not None:
            cut, self.crash_after = self.crash_after, None
            self.sent += [envelope for _, envelope in messages[:cut]]
            self.in_crash += [envelope.id for _, envelope in messages[:cut]]
            self.crashed_batch = [envelope.id for _, envelope in messages]
            raise Killed
        self.sent += [envelope for _, envelope in messages]


class OutboxMachine(RuleBasedStateMachine):
    url = ""
    ordering = "key"
    transactions = Bundle("transactions")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = tempfile.TemporaryDirectory()
        url = self.url or f"sqlite+aiosqlite:///{Path(self.folder.name) / 'app.sqlite3'}"
        self.sqlite = url.startswith("sqlite")
        self.engine = create_async_engine(url, **({} if self.sqlite else {"pool_size": 8}))
        self.clock = time.time()
        name = uuid.uuid4().hex[:10]
        self.outbox = Outbox(table=f"sm_{name}", inbox=f"smi_{name}", now=lambda: self.clock)
        self.broker = Recording()
        self.bus = EventBus(self.broker, service="shop", outbox=self.outbox)
        self.numbers = itertools.count()
        self.open: dict[int, tuple[AsyncSession, Any, list[Envelope]]] = {}
        self.handles = itertools.count()
        self.committed: dict[str, list[str]] = collections.defaultdict(list)  # key -> ids
        self.rolled_back: set[str] = set()
        self.leased_until: dict[str, float] = {}  # event id -> a crashed relay's lease expiry
        self.run(self.outbox.create_tables(self.engine))
        self.run(self.bus.start())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def _keys_held(self) -> set[str]:
        return {e.partitionkey or "" for _, _, staged in self.open.values() for e in staged}

    # ---------------------------------------------------------------- the application
    @precondition(lambda self: len(self.open) < (1 if self.sqlite else 3))
    @rule(target=transactions)
    def begin(self) -> int:
        session = AsyncSession(self.engine)
        transaction = self.run(session.begin().start())
        handle = next(self.handles)
        self.open[handle] = (session, transaction, [])
        return handle

    @rule(handle=transactions, key=st.sampled_from(KEYS), count=st.integers(1, 4))
    def stage(self, handle: int, key: str, count: int) -> None:
        if handle not in self.open:
            return  # this transaction has ended
        session, _, staged = self.open[handle]
        mine = {e.partitionkey for e in staged}
        if key in self._keys_held() - mine:
            return  # another open transaction holds the key: staging would wait for it
        items = [(Staged(n=next(self.numbers)), key) for _ in range(count)]
        staged += self.run(self.bus.publish_many(items, session=session))

    @precondition(lambda self: not self.sqlite or not self.open)
    @rule(key=st.sampled_from(KEYS), count=st.integers(1, 4), keep=st.booleans())
    def transaction(self, key: str, count: int, keep: bool) -> None:
        """A short transaction, begun, staged and ended in one step."""
        if key in self._keys_held():
            return
        handle = self.begin()
        self.stage(handle, key, count)
        (self.commit if keep else self.rollback)(handle)

    @rule(handle=consumes(transactions))
    def commit(self, handle: int) -> None:
        if handle not in self.open:
            return
        session, transaction, staged = self.open.pop(handle)
        self.run(transaction.commit())
        self.run(session.close())
        for envelope in staged:
            self.committed[envelope.partitionkey or ""].append(envelope.id)

    @rule(handle=consumes(transactions))
    def rollback(self, handle: int) -> None:
        if handle not in self.open:
            return
        session, transaction, staged = self.open.pop(handle)
        self.run(transaction.rollback())
        self.run(session.close())
        self.rolled_back |= {e.id for e in staged}

    # ---------------------------------------------------------------- the relays
    def _relay(self, batch_size: int) -> OutboxRelay:
        return OutboxRelay(
            self.engine, self.bus, outbox=self.outbox, ordering=self.ordering,
            batch_size=batch_size, lease=LEASE,
        )  # fmt: skip

    def _relay_may_run(self) -> bool:
        """On SQLite a relay's writes wait for the open writing transaction: in one thread that
        is a deadlock, so the relays run when no transaction has written."""
        return not self.sqlite or not any(staged for _, _, staged in self.open.values())

    @precondition(_relay_may_run)
    @rule(batch_size=st.integers(1, 8))
    def relay(self, batch_size: int) -> None:
        before = len(self.broker.sent)
        self.run(self._relay(batch_size).run_once())
        for envelope in self.broker.sent[before:]:
            until = self.leased_until.get(envelope.id, 0.0)
            assert until <= self.clock, "a relay took a row whose lease had not run out"

    @precondition(_relay_may_run)
    @rule(batch_size=st.integers(1, 8), sent=st.integers(0, 8))
    def crash(self, batch_size: int, sent: int) -> None:
        """A relay sends part of a batch and dies before it marks anything."""
        self.broker.crash_after = sent
        with contextlib.suppress(Killed):
            self.run(self._relay(batch_size).run_once())
        for event_id in self.broker.crashed_batch:  # leased by the dead relay
            self.leased_until[event_id] = self.clock + LEASE
        self.broker.crashed_batch = []
        self.broker.crash_after = None  # nothing was claimed: no batch reached the broker

    @rule()
    def leases_run_out(self) -> None:
        self.clock += LEASE + 1

    # ---------------------------------------------------------------- what must hold
    @invariant()
    def only_committed_events_are_published(self) -> None:
        committed = {event_id for ids in self.committed.values() for event_id in ids}
        sent = {e.id for e in self.broker.sent}
        assert sent <= committed, "an event was published that did not commit"
        assert not sent & self.rolled_back

    @invariant()
    def duplicates_come_only_from_a_crash(self) -> None:
        counts = collections.Counter(e.id for e in self.broker.sent)
        twice = {event_id for event_id, count in counts.items() if count > 1}
        assert twice <= set(self.broker.in_crash), "a row was published twice without a crash"

    @invariant()
    def first_publications_follow_commit_order(self) -> None:
        if self.ordering != "key":
            return
        for key, ids in self.firsts().items():
            assert ids == self.committed[key][: len(ids)], f"key {key!r} out of commit order"

    def firsts(self) -> dict[str, list[str]]:
        seen: set[str] = set()
        order: dict[str, list[str]] = collections.defaultdict(list)
        for envelope in self.broker.sent:
            if envelope.id not in seen:
                seen.add(envelope.id)
                order[envelope.partitionkey or ""].append(envelope.id)
        return order

    def teardown(self) -> None:
        try:
            for handle in list(self.open):
                self.commit(handle)
            self.clock += LEASE + 1
            self.relay(batch_size=50)
            committed = {event_id for ids in self.committed.values() for event_id in ids}
            assert {e.id for e in self.broker.sent} == committed, "a committed event was lost"
            self.first_publications_follow_commit_order()
            assert self.run(self.outbox.backlog(self.engine)).pending == 0
        finally:
            self.run(self._close())
            self.loop.close()
            self.folder.cleanup()

    async def _close(self) -> None:
        await self.bus.stop()
        if not self.sqlite:
            async with self.engine.begin() as connection:
                await connection.run_sync(self.outbox.metadata.drop_all)
        await self.engine.dispose()


def check(url: str, ordering: str, examples: int) -> None:
    machine: type[OutboxMachine] = type(
        "Machine", (OutboxMachine,), {"url": url, "ordering": ordering, "__module__": __name__}
    )
    machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_every_committed_event_is_published_in_key_order_on_sqlite(ordering: str) -> None:
    check("", ordering, examples=60)


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_every_committed_event_is_published_in_key_order_on_postgresql(
    ordering: str, postgres_url: str
) -> None:
    check(postgres_url, ordering, examples=30)
