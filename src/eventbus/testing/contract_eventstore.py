"""``EventStoreContract``: what every event store must do, as a pytest suite.

Subclass it and say how to make a store::

    class TestMyStore(EventStoreContract):
        async def make_store(self, events):
            store = EventStore(engine, events=events, prefix=f"t{uuid.uuid4().hex[:8]}_")
            await store.create_tables()
            return store

The in-memory store and the SQL store (on SQLite and on PostgreSQL) run it. Each test uses
streams of its own, so stores may share their tables between tests.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from eventbus.envelope import Envelope
from eventbus.errors import ConcurrencyError, ConfigurationError
from eventbus.publishing import new_event_id
from eventbus.testing._eventstore_base import Noted, Opened, opened
from eventbus.testing.contract_eventstore_races import RaceContract

__all__ = ["EventStoreContract"]


class EventStoreContract(RaceContract):
    """The conformance suite. Override :meth:`make_store`; optionally :meth:`dispose_store`
    and the class settings."""

    async def test_an_append_returns_the_new_version_and_reads_give_the_events(self) -> None:
        store, stream = await self.store(), self.stream("s")
        assert await store.append(stream, opened(1, 2), expected_version=0) == 2
        assert await store.append(stream, opened(3), expected_version=2) == 3
        records = await store.read(stream)
        assert [(r.stream_id, r.version) for r in records] == [
            (stream, 1),
            (stream, 2),
            (stream, 3),
        ]
        assert [r.event for r in records] == opened(1, 2, 3)
        assert records[0].position < records[1].position < records[2].position
        assert await store.stream_version(stream) == 3

    async def test_an_event_model_gets_the_envelope_publish_would_give_it(self) -> None:
        store, stream = await self.store(), self.stream("s")
        await store.append(stream, opened(1, 2), expected_version=0)
        first, second = (r.envelope for r in await store.read(stream))
        assert first.type == Opened.event_type
        assert first.dataversion == Opened.event_version
        assert first.partitionkey == stream
        assert first.correlationid == first.id
        assert first.id != second.id
        assert first.time is not None
        assert first.time.tzinfo is not None
        assert first.json() == {"n": 1, "text": ""}

    async def test_an_envelope_is_stored_exactly_as_given(self) -> None:
        store, stream = await self.store(), self.stream("s")
        envelope = Envelope(
            id=new_event_id(),
            type=Opened.event_type,
            source="elsewhere",
            data=b'{"n":7,"text":"h\\u00e9llo \xe2\x9c\x93"}',
            time=datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone.utc),
            subject="order/7",
            partitionkey="k-7",
            correlationid="corr-1",
            causationid="cause-1",
            dataversion=1,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            tracestate="vendor=1",
            extensions={"tenant": "acme"},
        )
        await store.append(stream, [envelope], expected_version=0)
        (record,) = await store.read(stream)
        assert record.envelope == envelope
        assert record.event == Opened(n=7, text="héllo ✓")
        (from_feed,) = await self.feed(store)
        assert from_feed == record

    async def test_expected_version_zero_means_the_stream_must_not_exist(self) -> None:
        store, stream = await self.store(), self.stream("s")
        await store.append(stream, opened(1), expected_version=0)
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(stream, opened(2), expected_version=0)
        assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
            stream,
            0,
            1,
        )
        assert repr(stream) in str(caught.value)
        assert [r.event for r in await store.read(stream)] == opened(1)

    async def test_a_stale_expected_version_raises_and_appends_nothing(self) -> None:
        store, stream = await self.store(), self.stream("s")
        await store.append(stream, opened(1, 2), expected_version=0)
        for expected in (1, 3, 9):
            with pytest.raises(ConcurrencyError) as caught:
                await store.append(stream, opened(3, 4), expected_version=expected)
            assert (caught.value.expected, caught.value.actual) == (expected, 2)
        with pytest.raises(ConcurrencyError) as missing:
            await store.append(self.stream("none"), opened(1), expected_version=1)
        assert (missing.value.expected, missing.value.actual) == (1, 0)
        assert await store.stream_version(stream) == 2
        assert await store.read(self.stream("none")) == []
        assert len(await self.feed(store)) == 2

    async def test_expected_version_none_appends_at_any_version(self) -> None:
        store, stream = await self.store(), self.stream("s")
        assert await store.append(stream, opened(1), expected_version=None) == 1
        assert await store.append(stream, opened(2, 3), expected_version=None) == 3

    async def test_an_empty_append_checks_the_version_and_writes_nothing(self) -> None:
        store, stream = await self.store(), self.stream("s")
        assert await store.append(stream, [], expected_version=0) == 0
        assert await store.stream_version(stream) == 0
        await store.append(stream, opened(1), expected_version=0)
        assert await store.append(stream, [], expected_version=1) == 1
        assert await store.append(stream, [], expected_version=None) == 1
        with pytest.raises(ConcurrencyError):
            await store.append(stream, [], expected_version=0)
        assert await store.append(stream, opened(2), expected_version=1) == 2

    async def test_read_from_a_version_gives_the_events_after_it(self) -> None:
        store, stream = await self.store(), self.stream("s")
        await store.append(stream, opened(1, 2, 3, 4), expected_version=0)
        assert [r.version for r in await store.read(stream, 2)] == [3, 4]
        assert await store.read(stream, 4) == []
        assert await store.read(self.stream("never")) == []
        assert await store.stream_version(self.stream("never")) == 0

    async def test_types_the_store_does_not_know_stay_undecoded(self) -> None:
        store, stream = await self.store(Opened), self.stream("s")
        newer = Envelope(
            id=new_event_id(), type=Opened.event_type, source="x", data=b"{}", dataversion=2
        )
        await store.append(stream, [Noted(note="n"), newer, Opened(n=1)], expected_version=0)
        unknown, other_version, known = await store.read(stream)
        assert unknown.event is None
        assert unknown.envelope.json() == {"note": "n"}
        assert other_version.event is None
        assert known.event == Opened(n=1)

    async def test_a_retried_append_returns_its_version_and_stores_nothing_twice(self) -> None:
        store, stream = await self.store(), self.stream("s")
        await store.append(stream, opened(0), expected_version=0)
        batch = [self.envelope(1), self.envelope(2)]
        assert await store.append(stream, batch, expected_version=1) == 3
        assert await store.append(stream, batch, expected_version=1) == 3
        assert await store.append(stream, batch, expected_version=None) == 3
        await store.append(stream, opened(4), expected_version=3)
        assert await store.append(stream, batch, expected_version=1) == 3  # later appends too
        assert await store.append(stream, batch[:1], expected_version=1) == 2
        assert [r.version for r in await store.read(stream)] == [1, 2, 3, 4]
        assert len(await self.feed(store)) == 4

    async def test_an_event_id_stored_elsewhere_is_a_conflict(self) -> None:
        store, stream = await self.store(), self.stream("s")
        stored = [self.envelope(1), self.envelope(2)]
        await store.append(stream, stored, expected_version=0)
        attempts = [
            (stream, [stored[0], self.envelope(3)], 0),  # partly stored
            (stream, [stored[1]], 0),  # stored, but not right after version 0
            (stream, stored, 1),  # stored, not after the expected version
            (stream, [self.envelope(3), stored[0]], 2),  # a fresh one, then a stored one
            (self.stream("other"), stored, 0),  # stored in another stream
            (self.stream("other"), stored, None),
        ]
        for target, envelopes, expected in attempts:
            with pytest.raises(ConcurrencyError, match="stored already"):
                await store.append(target, envelopes, expected_version=expected)
        assert await store.stream_version(stream) == 2
        assert await store.stream_version(self.stream("other")) == 0

    async def test_read_all_gives_every_stream_in_append_order_and_resumes(self) -> None:
        store = await self.store()
        a, b = self.stream("a"), self.stream("b")
        await store.append(a, opened(1), expected_version=0)
        await store.append(b, opened(2, 3), expected_version=0)
        await store.append(a, opened(4), expected_version=1)
        feed = await self.feed(store)
        assert [(r.stream_id, r.version, r.event) for r in feed] == [
            (a, 1, Opened(n=1)),
            (b, 1, Opened(n=2)),
            (b, 2, Opened(n=3)),
            (a, 2, Opened(n=4)),
        ]
        assert [r.position for r in feed] == sorted({r.position for r in feed})
        assert await self.feed(store, after=feed[1].position) == feed[2:]
        assert await self.feed(store, after=feed[-1].position) == []
        first_two = [r async for r in store.read_all(feed[0].position - 1, limit=2)]
        assert first_two == feed[:2]

    async def test_arguments_that_cannot_be_right_are_refused(self) -> None:
        store, stream = await self.store(), self.stream("s")
        bad_calls = [
            ("", opened(1), 0),
            (stream, opened(1), -1),
            (stream, opened(1), "1"),
            (stream, Opened(n=1), 0),  # not a list
            (stream, [object()], 0),
            (stream, [self.envelope(1)] * 2, 0),  # one id twice
        ]
        for target, events, expected in bad_calls:
            with pytest.raises(ConfigurationError):
                await store.append(target, events, expected_version=expected)  # type: ignore[arg-type]
        assert await store.stream_version(stream) == 0

    def envelope(self, n: int) -> Envelope:
        """A ready envelope of ``Opened(n=n)`` with a fresh id."""
        data = Opened(n=n).model_dump_json().encode()
        return Envelope(id=new_event_id(), type=Opened.event_type, source="test", data=data)
