"""What a read returns (:class:`StoredEvent`), how a stored envelope becomes an ``Event``, and
the protocol every store follows (:class:`EventStoreProtocol`).

A stored event is its envelope, exactly as appended, plus where it is: ``version`` in its
stream (1, 2, 3 …) and ``position`` in the store's global feed (increasing in commit order;
not dense — a rolled-back append leaves numbers unused).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

import pydantic

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, DecodeError
from eventbus.event import Event

__all__ = ["EventStoreProtocol", "EventTypes", "StoredEvent"]


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of a stream, as the store keeps it."""

    stream_id: str
    version: int
    """Its place in the stream: the first event is version 1."""
    position: int
    """Its place in the store's global feed (``read_all(after=position)`` continues after it)."""
    envelope: Envelope
    """The envelope as appended: id, type, dataversion, time, correlation, data …"""
    event: Event | None
    """The decoded event, when the store knows a class for its type and dataversion."""


class EventTypes:
    """The ``Event`` classes a store decodes stored envelopes into, by (type, dataversion).

    An envelope whose type or dataversion no class claims is returned undecoded (``event`` is
    None, the envelope is all there): a reader that does not know an event can still pass it
    on, and an old dataversion waits for an upcaster rather than failing validation.
    """

    def __init__(self, classes: Iterable[type[Event]] = ()) -> None:
        self._classes: dict[tuple[str, int], type[Event]] = {}
        for cls in classes:
            self.add(cls)

    def add(self, cls: type[Event]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise ConfigurationError(f"events= takes Event subclasses, not {cls!r}")
        key = (cls.event_type, cls.event_version)
        known = self._classes.setdefault(key, cls)
        if known is not cls:
            raise ConfigurationError(
                f"{known.__qualname__} and {cls.__qualname__} both claim event type "
                f"{key[0]!r} version {key[1]}; give one of them another event_type"
            )

    def decode(self, stream_id: str, version: int, envelope: Envelope) -> Event | None:
        """The event in ``envelope``, or None when no class claims its type and version."""
        cls = self._classes.get((envelope.type, envelope.dataversion or 1))
        if cls is None:
            return None
        try:
            return cls.model_validate_json(envelope.data)
        except pydantic.ValidationError as exc:
            raise DecodeError(
                f"stream {stream_id!r} version {version}: the stored {envelope.type!r} does not "
                f"validate as {cls.__qualname__}: {exc.error_count()} error(s), first: "
                f"{exc.errors()[0]['msg']}. Make the model accept what was stored"
            ) from exc

    def record(
        self, stream_id: str, version: int, position: int, envelope: Envelope
    ) -> StoredEvent:
        event = self.decode(stream_id, version, envelope)
        return StoredEvent(stream_id, version, position, envelope, event)


class EventStoreProtocol(Protocol):
    """What :class:`~eventbus.eventstore.EventStore` and
    :class:`~eventbus.testing.eventstore.InMemoryEventStore` both do, and
    :class:`~eventbus.testing.eventstore.EventStoreContract` checks.

    ``session`` is the caller's transaction, for stores that have transactions.
    """

    async def append(
        self,
        stream_id: str,
        events: Sequence[Event | Envelope],
        *,
        expected_version: int | None,
        session: Any = None,
        publish: bool = False,
    ) -> int: ...

    async def stream_version(self, stream_id: str, *, session: Any = None) -> int: ...

    async def read(
        self, stream_id: str, from_version: int = 0, *, session: Any = None
    ) -> list[StoredEvent]: ...

    def read_all(
        self, after: int = 0, *, limit: int | None = None
    ) -> AsyncIterator[StoredEvent]: ...
