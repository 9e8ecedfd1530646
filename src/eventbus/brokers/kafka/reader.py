"""One Kafka consumer of a subscription: its partitions, their commits and their rebalances.

A subscription reads through two readers (:class:`~.consumer.KafkaConsumer` combines them):
one in the subscription's Kafka group for its topic or pattern, and one in a group of its own
(:func:`~.topology.retry_group`) for its retry topics. aiokafka's fetch loop visits every
assigned partition on every turn, paused ones included, so the retry tiers (six topics of as
many partitions as the main one, by default) would otherwise multiply the work of each fetch
of the main topic. Apart, each group also rebalances on its own.

**Commits after handling.** Per partition (:class:`~.delivery._Partition`) the offsets in
flight are kept and :meth:`Reader.commit` commits the lowest unfinished one, or one past the
last delivered when none is, so with ``concurrency > 1`` a crash never skips an unhandled
message.

**Rebalances.** The revoked partitions' in-flight work gets ``revoke_timeout`` seconds to
finish; what is still running then is abandoned uncommitted (settling it later commits
nothing, since the partition's object is gone), and the new owner handles it again.

**Holding.** :meth:`Reader.hold` keeps a partition at an offset until a time (a retry copy not
due yet): it is sought back and paused, never slept on, and resumed when due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from eventbus.brokers.kafka.delivery import _Partition
from eventbus.brokers.kafka.driver import ERRORS

__all__ = ["Reader"]

log = logging.getLogger("eventbus.kafka")

_GONE = (KafkaError, KeyError, AssertionError)
"""What aiokafka raises for a partition no longer assigned (seek, pause, resume)."""


class Reader(ConsumerRebalanceListener):  # type: ignore[misc]
    """An ``AIOKafkaConsumer`` in Kafka group ``group_id`` (``config`` is its configuration),
    with the offsets of the partitions it has been given; ``name`` (the eventbus group) is
    for the logs."""

    def __init__(
        self, name: str, group_id: str, config: dict[str, Any], revoke_timeout: float
    ) -> None:
        self.name, self.group_id = name, group_id
        self.kafka: Any = AIOKafkaConsumer(**config, group_id=group_id, enable_auto_commit=False)
        self.parts: dict[Any, _Partition] = {}
        self.generation = 0
        """Counts assignments and revocations: a fetched batch from an older one is stale."""
        self.joined = asyncio.Event()
        self.settled = asyncio.Event()
        """Set by the owner whenever a delivery of this reader settles."""
        self._revoke_timeout = revoke_timeout
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._stopped = False

    async def start(self, *, topics: Sequence[str] = (), pattern: str | None = None) -> None:
        """Connect and subscribe to ``topics`` or ``pattern``; :attr:`joined` is set once the
        group has given this member its partitions."""
        with ERRORS(f"start a consumer for group {self.group_id!r}"):
            await self.kafka.start()
        if pattern is not None:
            self.kafka.subscribe(pattern=pattern, listener=self)
        else:
            self.kafka.subscribe(topics=list(topics), listener=self)

    # ---------------------------------------------------------------- rebalancing
    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self.parts[tp] = _Partition()
        self.generation += 1
        self.joined.set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Let in-flight work of the revoked partitions finish (bounded), commit what is safe."""
        self.generation += 1
        parts = {tp: self.parts[tp] for tp in revoked if tp in self.parts}
        deadline = time.monotonic() + self._revoke_timeout
        while any(p.inflight for p in parts.values()) and time.monotonic() < deadline:
            self.settled.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.settled.wait(), deadline - time.monotonic())
        abandoned = sum(len(p.inflight) for p in parts.values())
        if abandoned:
            log.warning("%s: %d in-flight message(s) abandoned on rebalance", self.name, abandoned)
        await self.commit(set(parts))
        for tp in parts:
            del self.parts[tp]
            timer = self._timers.pop(tp, None)
            if timer is not None:
                timer.cancel()

    # ---------------------------------------------------------------- positions
    def seek(self, tp: Any, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (nothing when it is no longer assigned here)."""
        if not self._stopped:
            with contextlib.suppress(*_GONE):
                self.kafka.seek(tp, offset)

    def hold(self, tp: Any, offset: int, wait: float) -> None:
        """Keep ``tp`` at ``offset`` for ``wait`` seconds: paused, then resumed and read again
        from there."""
        part = self.parts.get(tp)
        if part is None or self._stopped:
            return
        with contextlib.suppress(*_GONE):
            self.kafka.seek(tp, offset)
            self.kafka.pause(tp)
            self._timers[tp] = asyncio.get_running_loop().call_later(wait, self._resume, tp, part)

    def _resume(self, tp: Any, part: _Partition) -> None:
        self._timers.pop(tp, None)
        if self.parts.get(tp) is part and not self._stopped:
            with contextlib.suppress(*_GONE):
                self.kafka.resume(tp)

    # ---------------------------------------------------------------- committing
    async def commit(self, tps: set[Any]) -> set[Any]:
        """Commit what is safe of ``tps``; returns those whose commit failed and must be
        tried again (a rebalance or a lost coordinator: redelivery, never loss)."""
        offsets, parts = {}, {}
        for tp in tps:
            part = self.parts.get(tp)
            safe = part.safe() if part is not None else None
            if part is not None and safe is not None and safe > part.committed:
                offsets[tp], parts[tp] = safe, part
        if not offsets:
            return set()
        try:
            await self.kafka.commit(offsets)
        except KafkaError as exc:
            log.warning("%s: could not commit %s: %r", self.name, offsets, exc)
            return {tp for tp in offsets if self.parts.get(tp) is parts[tp]}
        for tp, offset in offsets.items():
            parts[tp].committed = max(parts[tp].committed, offset)
        return set()

    # ---------------------------------------------------------------- health
    async def lag(self, topics: Sequence[str], earliest: bool) -> int:
        """Records of ``topics`` past this group's committed offsets, over all their
        partitions, not only those assigned here. A partition the group never committed counts
        from its first record when new groups start at the ``earliest`` offset, else from its
        end (counting nothing)."""
        kafka = self.kafka
        tps = [
            TopicPartition(topic, partition)
            for topic in sorted(topics)
            for partition in sorted(kafka.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return 0
        with ERRORS(f"read the lag of group {self.group_id!r}"):
            ends = await kafka.end_offsets(tps)
            committed = await asyncio.gather(*(kafka.committed(tp) for tp in tps))
            never = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
            starts = await kafka.beginning_offsets(never) if never and earliest else {}
        return sum(
            max(0, ends[tp] - (offset if offset is not None else starts.get(tp, ends[tp])))
            for tp, offset in zip(tps, committed, strict=True)
        )

    async def stop(self) -> None:
        """Commit what is safe and leave the group; unsettled deliveries stay uncommitted, so
        the group gets them again."""
        if self._stopped:
            return
        self._stopped = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.commit(set(self.parts))
        with contextlib.suppress(KafkaError):
            await self.kafka.stop()
