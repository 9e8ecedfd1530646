"""The plumbing of :class:`eventbus.testing.eventstore.EventStoreContract`: the events, the
stores, the namespaces and the feed of one test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest

from eventbus.event import Event
from eventbus.eventstore.records import EventStoreProtocol, StoredEvent

__all__ = ["EventStoreBase", "Noted", "Opened"]


class Opened(Event):
    """The contract's event (a registered class: reads decode it)."""

    event_type = "eventbus.contract.Opened"
    n: int
    text: str = ""


class Noted(Event):
    """An event the contract's stores are not told about: reads leave it undecoded."""

    event_type = "eventbus.contract.Noted"
    note: str


class EventStoreBase:
    """What every part of the event-store suite shares."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio
    timeout: ClassVar[float] = 20.0
    """Deadline for every wait in the suite."""
    concurrent_appenders: ClassVar[int] = 10
    """Appenders racing for one version of one stream."""

    ns: str
    _stores: list[EventStoreProtocol]

    async def make_store(self, events: Sequence[type[Event]]) -> EventStoreProtocol:
        """A store under test that decodes ``events``, with tables ready. A store may share
        its tables with other tests: every test uses streams of its own (``self.stream``)."""
        raise NotImplementedError("subclass EventStoreContract and implement make_store()")

    async def dispose_store(self, store: EventStoreProtocol) -> None:
        """Called after the test for every store it made (drop its tables, say)."""

    # ---------------------------------------------------------------- plumbing
    @pytest.fixture(autouse=True)
    async def _eventstore_setup(self) -> AsyncIterator[None]:
        self.ns = f"c{uuid.uuid4().hex[:10]}"
        self._stores = []
        yield
        for store in self._stores:
            await self.dispose_store(store)

    async def store(self, *events: type[Event]) -> EventStoreProtocol:
        store = await self.make_store(events or (Opened,))
        self._stores.append(store)
        return store

    def stream(self, name: str) -> str:
        return f"{self.ns}-{name}"

    async def feed(
        self, store: EventStoreProtocol, after: int = 0, prefix: str | None = None
    ) -> list[StoredEvent]:
        """The records of this test's streams (those starting with ``prefix``) after ``after``."""
        prefix = self.ns if prefix is None else prefix
        return [r async for r in store.read_all(after) if r.stream_id.startswith(prefix)]


def opened(*numbers: int) -> list[Event]:
    return [Opened(n=n) for n in numbers]
