"""The event-store suite's concurrent part: racing appenders, a reader following the feed
while many writers append, and random interleavings of appends and reads (Hypothesis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus.envelope import Envelope
from eventbus.errors import ConcurrencyError
from eventbus.eventstore.records import EventStoreProtocol, StoredEvent
from eventbus.publishing import new_event_id
from eventbus.testing._eventstore_base import EventStoreBase, Opened, opened

__all__ = ["RaceContract"]

_STEP = st.tuples(
    st.sampled_from(["exact", "any", "stale", "read", "feed"]),
    st.integers(0, 2),  # which of three streams
    st.integers(0, 3),  # how many events
)
_PLANS = st.lists(st.lists(_STEP, min_size=1, max_size=4), min_size=1, max_size=5)
"""Rounds of steps; the steps of one round run at the same time."""


class RaceContract(EventStoreBase):
    _interleaved: EventStoreProtocol | None

    async def test_of_appenders_racing_for_one_version_exactly_one_wins(self) -> None:
        store, stream = await self.store(), self.stream("s")
        await store.append(stream, opened(0), expected_version=0)

        async def appender(n: int) -> int:
            return await store.append(stream, opened(n, n), expected_version=1)

        outcomes = await asyncio.gather(
            *(appender(n) for n in range(self.concurrent_appenders)), return_exceptions=True
        )
        won = [o for o in outcomes if isinstance(o, int)]
        lost = [o for o in outcomes if isinstance(o, ConcurrencyError)]
        assert won == [3], outcomes
        assert len(lost) == self.concurrent_appenders - 1, outcomes
        assert all(e.expected == 1 and e.actual in (3, None) for e in lost), lost
        records = await store.read(stream)
        assert [r.version for r in records] == [1, 2, 3]
        assert records[1].event == records[2].event  # both events of the one winner

    async def test_appenders_expecting_any_version_of_one_stream_all_succeed(self) -> None:
        """``expected_version=None`` means any: racing appenders must not collide, each
        event is stored once and the versions stay dense."""
        store, stream = await self.store(), self.stream("s")

        async def appender(n: int) -> int:
            return await store.append(stream, opened(n), expected_version=None)

        versions = await asyncio.gather(*(appender(n) for n in range(self.concurrent_appenders)))
        assert sorted(versions) == list(range(1, self.concurrent_appenders + 1)), versions
        records = await store.read(stream)
        assert [r.version for r in records] == sorted(versions)

    async def test_retries_of_one_append_racing_each_other_store_it_once(self) -> None:
        store, stream = await self.store(), self.stream("s")
        batch = [_envelope(1), _envelope(2)]
        outcomes = await asyncio.gather(
            *(store.append(stream, batch, expected_version=0) for _ in range(4))
        )
        assert outcomes == [2, 2, 2, 2]
        assert [r.envelope for r in await store.read(stream)] == batch

    async def test_a_reader_following_the_feed_sees_every_event_once_in_stream_order(
        self,
    ) -> None:
        store = await self.store()
        streams = [self.stream(f"s{i}") for i in range(12)]
        appended: dict[str, int] = {}

        async def writer(stream: str, seed: int) -> None:
            version = 0
            for round_ in range(6):
                batch = opened(*range(1 + (seed + round_) % 3))
                version = await store.append(stream, batch, expected_version=version)
            appended[stream] = version

        writers = asyncio.gather(*(writer(s, i) for i, s in enumerate(streams)))
        seen = await self._follow(store, lambda: writers.done(), writers)
        ids = [r.envelope.id for r in seen]
        assert len(ids) == len(set(ids)), "an event was read twice"
        assert [r.position for r in seen] == sorted(r.position for r in seen)
        for stream in streams:
            mine = [r for r in seen if r.stream_id == stream]
            assert [r.version for r in mine] == list(range(1, appended[stream] + 1))
            assert mine == await store.read(stream)

    async def _follow(
        self, store: EventStoreProtocol, finished: Any, writers: asyncio.Future[Any]
    ) -> list[StoredEvent]:
        """Follow ``read_all`` from the start until the writers are done and it is read to
        the end; fail at the deadline."""
        seen: list[StoredEvent] = []
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                done = finished()  # before the read: what committed by now is in it
                after = seen[-1].position if seen else 0
                seen.extend(
                    [r async for r in store.read_all(after) if r.stream_id.startswith(self.ns)]
                )
                if done:
                    await writers  # their errors, if any
                    return seen
                if time.monotonic() > deadline:
                    pytest.fail(f"the writers did not finish within {self.timeout}s")
                await asyncio.sleep(0.002)
        finally:
            writers.cancel()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_PLANS)
    async def test_random_interleavings_never_lose_or_reorder_a_streams_events(
        self, plan: list[list[tuple[str, int, int]]]
    ) -> None:
        store = getattr(self, "_interleaved", None)
        if store is None:  # one store for every example; streams of its own for each
            store = self._interleaved = await self.store()
        await Interleaving(store, f"{self.ns}-{uuid.uuid4().hex[:6]}").run(plan)


class Interleaving:
    """One random plan: rounds of steps, the steps of a round run at the same time. The
    checks: every append that returned is in its stream, in order, at the versions it
    returned; nothing else is; the feed gives each event once, in position order."""

    def __init__(self, store: EventStoreProtocol, ns: str) -> None:
        self.store, self.ns = store, ns
        self.versions = [0, 0, 0]  # what committed, as far as the plan knows
        self.appended: dict[str, dict[int, str]] = defaultdict(dict)  # stream: version: id
        self.reads: list[tuple[str, list[StoredEvent]]] = []
        self.feed: list[StoredEvent] = []
        self.following = asyncio.Lock()

    async def run(self, plan: list[list[tuple[str, int, int]]]) -> None:
        for steps in plan:
            await asyncio.gather(*(self.step(*s) for s in steps))
        await self.follow()
        for stream, stored in self.appended.items():
            records = await self.store.read(stream)
            assert {r.version: r.envelope.id for r in records} == stored
            assert [r.version for r in records] == list(range(1, len(records) + 1))
        for stream, prefix in self.reads:  # what a read saw is how the stream began
            assert prefix == (await self.store.read(stream))[: len(prefix)]
        assert len({r.envelope.id for r in self.feed}) == len(self.feed)
        assert {r.envelope.id for r in self.feed} == {
            i for stored in self.appended.values() for i in stored.values()
        }
        assert [r.position for r in self.feed] == sorted(r.position for r in self.feed)

    async def step(self, kind: str, index: int, count: int) -> None:
        stream = f"{self.ns}-{index}"
        if kind == "read":
            self.reads.append((stream, await self.store.read(stream)))
            return
        if kind == "feed":
            await self.follow()
            return
        known = self.versions[index]
        expected = {"exact": known, "any": None, "stale": known - 1 if known else 10**6}[kind]
        envelopes = [_envelope(n) for n in range(count)]
        try:
            version = await self.store.append(stream, envelopes, expected_version=expected)
        except ConcurrencyError:
            assert kind != "any", "an append at any version failed"
            return
        assert kind != "stale", "an append at a version the stream had passed succeeded"
        for v, envelope in enumerate(envelopes, version - count + 1):
            self.appended[stream][v] = envelope.id
        self.versions[index] = max(self.versions[index], version)

    async def follow(self) -> None:
        async with self.following:  # one reader: two would both read after one position
            after = self.feed[-1].position if self.feed else 0
            new = [r async for r in self.store.read_all(after) if r.stream_id.startswith(self.ns)]
            self.feed.extend(new)


def _envelope(n: int) -> Envelope:
    data = Opened(n=n).model_dump_json().encode()
    return Envelope(id=new_event_id(), type=Opened.event_type, source="test", data=data)
