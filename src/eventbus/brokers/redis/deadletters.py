"""The Redis adapter's dead-letter store: ``{prefix}~dlq~{group}`` streams.

A dead letter is an entry of its group's dead-letter stream: ``data`` = the original bytes,
the original headers as fields, and the provenance as ``eventbus-dlq-*`` fields
(:mod:`~eventbus.brokers.redis.entries`), written atomically with the ``XACK`` of the failed
entry (the ``dead`` settle script). ``{prefix}~dlq-index`` maps each dead-letter id to
``"<entry id> <stream>"``, so ``get`` and ``replay`` find one without a scan. ``replay`` puts
the original fields back on the group's retry stream and removes the dead letter in one
script; ``purge`` empties a stream and its index entries in one script.
"""

from __future__ import annotations

from typing import Any

from eventbus.brokers._wire import text
from eventbus.brokers.redis.entries import DEAD_LETTER_ID, dead_letter_record, replayed_fields
from eventbus.brokers.redis.link import Link
from eventbus.brokers.redis.topology import Keys
from eventbus.deadletters import DeadLetterRecord
from eventbus.errors import DeadLetterNotFound, EventBusError

__all__ = ["RedisDeadLetters"]


def _stream_id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class RedisDeadLetters:
    """Dead letters in ``{prefix}~dlq~{group}`` streams, found by id through the index hash."""

    def __init__(self, link: Link, keys: Keys) -> None:
        self._link = link
        self._keys = keys

    async def _locate(self, dead_letter_id: str) -> tuple[str, str] | None:
        """The stream and entry id of a dead letter, from the index."""
        async with self._link.call(f"look up dead letter {dead_letter_id!r}"):
            where = await self._link.redis.hget(self._keys.dlq_index, dead_letter_id)
        if where is None:
            return None
        entry_id, _, stream = text(where).partition(" ")
        return stream, entry_id

    async def _read(
        self, dead_letter_id: str, stream: str, entry_id: str
    ) -> DeadLetterRecord | None:
        async with self._link.call(f"read dead letter {dead_letter_id!r}"):
            entries: Any = await self._link.redis.xrange(stream, entry_id, entry_id)
        return dead_letter_record(entries[0][1]) if entries else None

    async def _streams(self, group: str | None) -> list[str]:
        """The dead-letter streams of ``group``, or of every group that has any."""
        if group is not None:
            return [self._keys.dlq(group)]
        async with self._link.call("list dead-letter streams"):
            where = await self._link.redis.hvals(self._keys.dlq_index)
        return sorted({text(w).partition(" ")[2] for w in where})

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        found: list[tuple[tuple[int, int], DeadLetterRecord]] = []
        for stream in await self._streams(group):
            async with self._link.call(f"read dead letters from {stream!r}"):
                entries: Any = await self._link.redis.xrange(stream, count=limit)
            found += [(_stream_id(text(i)), dead_letter_record(f)) for i, f in entries]
        found.sort(key=lambda item: item[0])
        return [record for _, record in found[:limit]]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        located = await self._locate(dead_letter_id)
        return None if located is None else await self._read(dead_letter_id, *located)

    async def replay(self, dead_letter_id: str) -> None:
        """Put the original fields back on the group's retry stream: attempt 1, same event id."""
        located = await self._locate(dead_letter_id)
        record = None if located is None else await self._read(dead_letter_id, *located)
        if located is None or record is None:
            raise DeadLetterNotFound(dead_letter_id)
        if not (record.destination and record.group):  # it would go to a stream nobody reads
            raise EventBusError(
                f"dead letter {dead_letter_id!r} does not say which destination and group it "
                f"failed in (eventbus did not write it), so it cannot be replayed; read it "
                f"with XRANGE {located[0]} {located[1]} {located[1]}"
            )
        link, keys = self._link, self._keys
        target = keys.retry(record.destination, record.group)
        await link.create_group(target, record.group, "0")
        async with link.call(f"replay dead letter {dead_letter_id!r}"):
            done = await link.scripts["replay"](
                keys=[keys.dlq_index, located[0], target],
                args=[dead_letter_id, located[1], *replayed_fields(record)],
            )
        if not done:
            raise DeadLetterNotFound(dead_letter_id, " (replayed meanwhile)")

    async def purge(self, *, group: str | None = None) -> int:
        removed = 0
        for stream in await self._streams(group):
            async with self._link.call(f"purge dead letters in {stream!r}"):
                removed += await self._link.scripts["purge"](
                    keys=[self._keys.dlq_index, stream], args=[DEAD_LETTER_ID]
                )
        return removed
