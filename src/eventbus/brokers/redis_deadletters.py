"""The Redis Streams adapter's dead-letter store: ``{prefix}~dlq~{group}`` streams.

A dead letter is an entry ``{id, data: the original bytes, headers: JSON, record: JSON
provenance}`` in its group's dead-letter stream, written atomically with the ``XACK`` of the
failed entry (the adapter's ``dead`` settle script). ``{prefix}~dlq-index`` maps each
dead-letter id to ``"<entry id> <stream>"``, so ``get`` and ``replay`` find one without a scan.
``replay`` puts the original fields back on the group's retry stream and removes the dead letter
in one script; ``purge`` empties a stream and its index entries in one script.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventbus.brokers.redis import _CARRIED, _text
from eventbus.deadletters import DeadLetterRecord
from eventbus.errors import DeadLetterNotFound

if TYPE_CHECKING:
    from eventbus.brokers.redis import RedisBroker

__all__ = ["RedisDeadLetters", "dlq_fields"]


def _jsonable(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


_PROVENANCE = (
    "id",
    "destination",
    "group",
    "subscription",
    "reason",
    "error_type",
    "error_message",
    "attempts",
    "event_id",
    "event_type",
    "traceparent",
    "traceback",
)


def dlq_fields(record: DeadLetterRecord) -> list[Any]:
    """The fields of a dead-letter entry: id, the original bytes, headers and provenance."""
    provenance: dict[str, Any] = {name: getattr(record, name) for name in _PROVENANCE}
    for name in ("first_failure_at", "last_failure_at"):
        moment = getattr(record, name)
        provenance[name] = moment.isoformat() if moment else None
    headers = {k: _jsonable(v) for k, v in record.headers.items()}
    return [
        "id",
        record.id,
        "data",
        record.body,
        "headers",
        json.dumps(headers),
        "record",
        json.dumps(provenance),
    ]


def _record(fields: Mapping[bytes, bytes]) -> DeadLetterRecord:
    provenance = json.loads(fields[b"record"])
    for name in ("first_failure_at", "last_failure_at"):
        moment = provenance.get(name)
        provenance[name] = datetime.fromisoformat(moment) if moment else None
    headers = json.loads(fields[b"headers"])
    return DeadLetterRecord(headers=headers, body=fields.get(b"data", b""), **provenance)


def _stream_id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class RedisDeadLetters:
    """Dead letters in ``{prefix}~dlq~{group}`` streams, found by id through the index hash."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def _locate(self, dead_letter_id: str) -> tuple[str, str] | None:
        async with self._broker._io(f"look up dead letter {dead_letter_id!r}"):
            where = await self._broker.redis.hget(self._broker.keys.dlq_index, dead_letter_id)
        if where is None:
            return None
        entry_id, _, stream = _text(where).partition(" ")
        return stream, entry_id

    async def _streams(self, group: str | None) -> list[str]:
        if group is not None:
            return [self._broker.keys.dlq(group)]
        async with self._broker._io("list dead-letter streams"):
            where = await self._broker.redis.hvals(self._broker.keys.dlq_index)
        return sorted({_text(w).partition(" ")[2] for w in where})

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        found: list[tuple[tuple[int, int], DeadLetterRecord]] = []
        for stream in await self._streams(group):
            async with self._broker._io(f"read dead letters from {stream!r}"):
                entries: Any = await self._broker.redis.xrange(stream, count=limit)
            found += [(_stream_id(_text(i)), _record(f)) for i, f in entries]
        found.sort(key=lambda item: item[0])
        return [record for _, record in found[:limit]]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        located = await self._locate(dead_letter_id)
        if located is None:
            return None
        stream, entry_id = located
        async with self._broker._io(f"read dead letter {dead_letter_id!r}"):
            entries: Any = await self._broker.redis.xrange(stream, entry_id, entry_id)
        return _record(entries[0][1]) if entries else None

    async def replay(self, dead_letter_id: str) -> None:
        """Put the original fields back on the group's retry stream: attempt 1, same event id."""
        located = await self._locate(dead_letter_id)
        record = await self.get(dead_letter_id) if located else None
        if located is None or record is None:
            raise DeadLetterNotFound(dead_letter_id)
        broker = self._broker
        target = broker.keys.retry(record.destination, record.group)
        await broker.create_group(target, record.group, "0")
        fields: list[Any] = ["data", record.body]
        for name, value in record.headers.items():
            if not name.startswith(_CARRIED):
                fields += [name, value.encode("utf-8", "surrogateescape")]
        async with self._broker._io(f"replay dead letter {dead_letter_id!r}"):
            done = await broker.scripts["replay"](
                keys=[broker.keys.dlq_index, located[0], target],
                args=[dead_letter_id, located[1], *fields],
            )
        if not done:
            raise DeadLetterNotFound(dead_letter_id, " (replayed meanwhile)")

    async def purge(self, *, group: str | None = None) -> int:
        removed = 0
        for stream in await self._streams(group):
            async with self._broker._io(f"purge dead letters in {stream!r}"):
                removed += await self._broker.scripts["purge"](
                    keys=[self._broker.keys.dlq_index, stream]
                )
        return removed
