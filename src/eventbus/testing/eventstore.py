"""An event store in memory for unit tests, and the suite every event store passes.

* :class:`InMemoryEventStore` — the API of :class:`eventbus.eventstore.EventStore`, kept in a
  dict: the same checks (the one decision of :mod:`eventbus.eventstore.appends`), the same
  envelopes, the same records. It passes :class:`EventStoreContract`, as the SQL store does
  on SQLite and PostgreSQL, so a unit test on it means what it says.
* :class:`EventStoreContract` — the conformance suite; subclass it and implement
  ``make_store``. It needs pytest and Hypothesis, and is imported when first asked for.

Needs no database driver.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.eventstore.appends import (
    Envelopes,
    check_expected,
    check_stream_id,
    decide,
    publish_needs,
)
from eventbus.eventstore.records import EventTypes, StoredEvent

if TYPE_CHECKING:
    from eventbus.testing.contract_eventstore import EventStoreContract

__all__ = ["EventStoreContract", "InMemoryEventStore"]


class InMemoryEventStore:
    """Streams in this process's memory. An append is atomic (it never awaits between its
    check and its write), so concurrent appenders behave as on a database; there are no
    transactions, so ``session=`` is refused rather than ignored."""

    def __init__(
        self, *, service: str = "app", events: Iterable[type[Event]] = (), bus: Any = None
    ) -> None:
        self.bus = bus
        """Where ``append(..., publish=True)`` publishes what it appends (an ``EventBus``;
        the SQL store stages in its outbox instead)."""
        self.types = EventTypes(events)
        self._envelopes = Envelopes(service)
        self._streams: dict[str, list[StoredEvent]] = {}
        self._feed: list[StoredEvent] = []
        self._where: dict[str, tuple[str, int]] = {}

    async def append(
        self,
        stream_id: str,
        events: Sequence[Event | Envelope],
        *,
        expected_version: int | None,
        session: Any = None,
        publish: bool = False,
    ) -> int:
        """As :meth:`eventbus.eventstore.EventStore.append`, without ``session``; with
        ``publish=True`` the stored envelopes are then published, unchanged, on ``bus``."""
        _refuse_session(session)
        if publish:
            publish_needs(self.bus, "InMemoryEventStore(bus=...): the bus to publish on")
        stream_id = check_stream_id(stream_id)
        expected = check_expected(expected_version)
        envelopes = self._envelopes(stream_id, events)
        stream = self._streams.get(stream_id, [])
        current = len(stream)
        stored = {e.id: self._where[e.id] for e in envelopes if e.id in self._where}
        done = decide(stream_id, expected, current, envelopes, stored)
        if done is not None:
            return done
        for version, envelope in enumerate(envelopes, current + 1):
            record = self.types.record(stream_id, version, len(self._feed) + 1, envelope)
            stream.append(record)
            self._feed.append(record)
            self._where[envelope.id] = (stream_id, version)
        if stream:
            self._streams[stream_id] = stream
        if publish:
            for destination, envelope in self._envelopes.messages(envelopes):
                await self.bus.publish_envelope(envelope, destination)
        return current + len(envelopes)

    async def stream_version(self, stream_id: str, *, session: Any = None) -> int:
        _refuse_session(session)
        return len(self._streams.get(check_stream_id(stream_id), ()))

    async def read(
        self, stream_id: str, from_version: int = 0, *, session: Any = None
    ) -> list[StoredEvent]:
        _refuse_session(session)
        return list(self._streams.get(check_stream_id(stream_id), ())[max(from_version, 0) :])

    async def read_all(
        self, after: int = 0, *, limit: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        """The feed after ``after``, up to what is appended when each record is taken."""
        index = max(after, 0)  # positions are 1, 2, 3 …: position p sits at index p - 1
        given = 0
        while index < len(self._feed) and (limit is None or given < limit):
            yield self._feed[index]
            index += 1
            given += 1


def _refuse_session(session: Any) -> None:
    if session is not None:
        raise ConfigurationError(
            "InMemoryEventStore has no transactions, so session= would be ignored; test code "
            "that appends in a session against EventStore on SQLite (sqlite+aiosqlite://)"
        )


def __getattr__(name: str) -> Any:
    if name == "EventStoreContract":  # pytest and Hypothesis: only for the suite
        return importlib.import_module("eventbus.testing.contract_eventstore").EventStoreContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
