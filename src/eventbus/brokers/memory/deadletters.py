"""The memory broker's dead-letter store (``bus.dead_letters``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventbus.brokers.memory.queues import GroupQueue, Message
from eventbus.deadletters import DeadLetterRecord, from_provenance, provenance
from eventbus.errors import DeadLetterNotFound

__all__ = ["MemoryDeadLetters"]


class MemoryDeadLetters:
    """The memory broker's dead-letter store (``bus.dead_letters``).

    Records are kept as every network adapter keeps them (provenance written by
    :func:`eventbus.deadletters.provenance`, original headers and bytes) and read back the same
    way, so what a unit test sees of a dead letter is what production stores.
    """

    def __init__(self) -> None:
        self._records: dict[str, tuple[dict[str, str], Mapping[str, Any], bytes, GroupQueue]] = {}

    def _add(self, record: DeadLetterRecord, group_queue: GroupQueue) -> None:
        self._records[record.id] = (
            provenance(record),
            dict(record.headers),
            record.body,
            group_queue,
        )

    def _record(self, dead_letter_id: str) -> DeadLetterRecord | None:
        entry = self._records.get(dead_letter_id)
        return from_provenance(entry[0], entry[1], entry[2]) if entry else None

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        records = [
            from_provenance(values, headers, body)
            for values, headers, body, queue in self._records.values()
            if group is None or queue.group == group
        ]
        return records[:limit]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        return self._record(dead_letter_id)

    async def replay(self, dead_letter_id: str) -> None:
        entry = self._records.pop(dead_letter_id, None)
        if entry is None:
            raise DeadLetterNotFound(dead_letter_id)
        values, headers, body, group_queue = entry
        destination = from_provenance(values, headers, body).destination
        key = headers.get("ce_partitionkey")
        group_queue.queue.put_nowait(Message(destination, None, (headers, body), key))

    async def purge(self, *, group: str | None = None) -> int:
        doomed = [i for i, e in self._records.items() if group is None or e[3].group == group]
        for dead_letter_id in doomed:
            del self._records[dead_letter_id]
        return len(doomed)
