"""One record handed to the bus, and the offsets of the partition it came from.

A delivery settles through its consumer (:class:`Settling`): an ack or a dead letter lets its
offset be committed, ``retry_later`` and ``nack`` first write a retry copy, ``release`` seeks
its partition back to it. Each settle happens once; one that raises leaves the delivery
unsettled, so it can be tried again.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, MutableMapping
from typing import Any

from eventbus.brokers._wire import read_carried
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope, decode
from eventbus.errors import DecodeError

__all__ = ["KafkaDelivery", "Settling", "_Partition"]


class Settling(abc.ABC):
    """What a delivery asks of its consumer (:class:`~.consumer.KafkaConsumer` is the one).

    A base class rather than a ``Protocol``: the consumer is the only implementation, and a
    nominal type keeps a stand-in that has none of these (a ``SimpleNamespace``) from passing
    type checks unnoticed.
    """

    @property
    @abc.abstractmethod
    def nack_delay(self) -> float:
        """How long a nacked delivery waits before it comes back."""

    @abc.abstractmethod
    def settle(self, delivery: KafkaDelivery) -> None:
        """Done: its offset may be committed."""

    @abc.abstractmethod
    def give_back(self, delivery: KafkaDelivery) -> None:
        """Read it again from Kafka, with the attempt it had."""

    @abc.abstractmethod
    async def republish(self, delivery: KafkaDelivery, delay: float) -> None:
        """Write its retry copy, due after ``delay`` seconds."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: KafkaDelivery, record: DeadLetterRecord) -> None:
        """Write its dead letter."""


class _Partition:
    """Offsets of one assigned partition: what is in flight and what is safe to commit.

    A new object per assignment, so settling a delivery from a revoked (and perhaps
    reassigned) partition is recognised and never commits.
    """

    __slots__ = ("committed", "inflight", "next", "returned")

    def __init__(self) -> None:
        self.inflight: set[int] = set()
        self.returned: set[int] = set()  # handed back to be read again: never committed past
        self.next: int | None = None
        self.committed = -1

    def safe(self) -> int | None:
        """The offset to commit: the lowest unfinished one, else one past the last delivered."""
        if self.returned:
            return min(self.returned | self.inflight)
        return min(self.inflight) if self.inflight else self.next


class KafkaDelivery:
    """One record; ``headers`` are the record's headers as received (values are bytes).

    ``envelope``, when given, is what :func:`~.records.read_record` read off an original that
    eventbus published: nothing is carried, and the headers are only made a mapping when
    asked for (a dead letter, a retry copy)."""

    __slots__ = (
        "_consumer",
        "_done",
        "_headers",
        "_record",
        "attempt",
        "body",
        "decode_error",
        "destination",
        "envelope",
        "key",
        "metadata",
        "offset",
        "partition",
        "tp",
    )

    def __init__(
        self,
        consumer: Settling,
        tp: Any,
        partition: _Partition,
        record: Any,
        headers: Mapping[str, Any] | None = None,
        envelope: Envelope | None = None,
    ):
        self._consumer = consumer
        self._done = False
        self._record = record
        self.tp, self.partition, self.offset = tp, partition, record.offset
        self.body: bytes = record.value or b""
        self.key: bytes | None = record.key
        self.decode_error: DecodeError | None = None
        if envelope is not None:
            self._headers: Mapping[str, Any] | None = headers
            self.attempt = 1
            self.destination: str = record.topic
            self.metadata: MutableMapping[str, str] = {}
            self.envelope: Envelope | None = envelope
            return
        self._headers = headers = dict(record.headers) if headers is None else headers
        self._read(headers, record)

    @property
    def headers(self) -> Mapping[str, Any]:
        if self._headers is None:
            self._headers = dict(self._record.headers)
        return self._headers

    def _read(self, headers: Mapping[str, Any], record: Any) -> None:
        """What a record that :func:`~.records.read_record` did not read carries and holds."""
        carried = read_carried(headers)  # what a retry copy carries; nothing on originals
        self.attempt = carried.attempt or 1
        self.destination = carried.destination or record.topic
        self.metadata = carried.metadata
        self.envelope = None
        try:
            self.envelope = decode(headers, record.value, key=record.key)
        except DecodeError as exc:
            self.decode_error = exc

    @property
    def partition_id(self) -> str:
        """The record's partition, as the messaging conventions write it (for tracing)."""
        return str(self.tp.partition)

    def _claim(self) -> bool:
        done, self._done = self._done, True
        return not done

    async def ack(self) -> None:
        if self._claim():
            self._consumer.settle(self)

    async def nack(self) -> None:
        """The handler was cancelled: a retry copy, due after ``nack_delay`` (attempt + 1),
        so that a handler failing this way is not a tight re-read loop."""
        await self.retry_later(self._consumer.nack_delay)

    async def release(self) -> None:
        """Read again from Kafka with the attempt it had: the partition is sought back to it
        and nothing past it is committed until then (see ``KafkaConsumer.give_back``)."""
        if self._claim():
            self._consumer.give_back(self)

    async def retry_later(self, delay: float) -> None:
        if self._done:
            return
        await self._consumer.republish(self, delay)  # raises: stays unsettled, redelivered
        if self._claim():
            self._consumer.settle(self)

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        if self._done:
            return
        await self._consumer.dead_letter(self, record)  # raises: stays unsettled
        if self._claim():
            self._consumer.settle(self)
