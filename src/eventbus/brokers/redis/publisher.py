"""Publishing: ``XADD``, with at most one round trip in flight per adapter.

A publish made while another is on its way waits for it; everything that queued up meanwhile
then goes out as one pipeline on one connection, and each caller is answered with its own
reply. So 100 tasks each awaiting its own ``publish`` cost about one round trip per hundred
events, and each still returns only when its own entry is in Redis. A lone publish is sent at
once: nothing waits for company. If the round trip fails, every publish in it fails; if Redis
refuses one entry, only that publish fails; a publish cancelled while it waits is not sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from eventbus.brokers.redis.entries import published
from eventbus.brokers.redis.link import PUBLISH_ERRORS, Link, failure, timeout
from eventbus.errors import EventBusError, PublishError

__all__ = ["Publisher"]

log = logging.getLogger("eventbus.redis")


class _Queued:
    """A publish waiting for the round trip in flight to end."""

    __slots__ = ("data", "destination", "event_id", "future", "stream")

    def __init__(
        self,
        stream: str,
        data: bytes,
        event_id: str,
        destination: str,
        future: asyncio.Future[None],
    ) -> None:
        self.stream = stream
        self.data = data
        self.event_id = event_id
        self.destination = destination
        self.future = future

    def fail(self, exc: BaseException, seconds: float | None = None) -> None:
        """Answer the publisher with the error ``exc`` means for its publish."""
        if self.future.done():
            return
        what = f"publish {self.event_id} to {self.destination!r}"
        error = failure(exc, what, seconds, PUBLISH_ERRORS) if isinstance(exc, Exception) else None
        if error is None and isinstance(exc, EventBusError):
            error = exc  # the adapter was closed meanwhile (BusNotStarted)
        if error is None:
            error = PublishError(
                f"could not {what}: the pipeline it was in was interrupted ({exc!r}); "
                "it may or may not have been published"
            )
            error.__cause__ = exc
        self.future.set_exception(error)


class Publisher:
    """The publishing side of one adapter; see the module documentation."""

    def __init__(self, link: Link, maxlen: int | None) -> None:
        self._link = link
        self._maxlen = maxlen
        self._sending = False
        self._queued: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    async def publish(self, stream: str, data: bytes, event_id: str, destination: str) -> None:
        """``XADD`` one entry; returns once Redis has replied to this very ``XADD``."""
        redis = self._link.redis
        if self._sending:
            future = asyncio.get_running_loop().create_future()
            self._queued.append(_Queued(stream, data, event_id, destination, future))
            await future
            return
        self._sending = True
        seconds = self._link.socket_timeout
        try:
            async with timeout(seconds):
                await redis.xadd(stream, published(data), maxlen=self._maxlen)
        except Exception as exc:
            error = failure(exc, f"publish {event_id} to {destination!r}", seconds, PUBLISH_ERRORS)
            if error is None:
                raise
            raise error from exc
        finally:
            self._round_trip_done()

    async def publish_batch(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """One pipelined round trip; on an error some entries may have been published already."""
        pipe = self._link.redis.pipeline(transaction=False)
        for stream, data in entries:
            pipe.xadd(stream, published(data), maxlen=self._maxlen)
        async with self._link.call(f"publish a batch of {len(entries)} events", PUBLISH_ERRORS):
            await pipe.execute()

    async def close(self) -> None:
        """Wait until what is queued has been sent."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])

    def _round_trip_done(self) -> None:
        """A publish round trip is over: send what queued up meanwhile, or go idle."""
        if self._queued:
            self._flusher = asyncio.get_running_loop().create_task(
                self._send_queued(), name="eventbus:redis-publish"
            )
        else:
            self._sending = False

    async def _send_queued(self) -> None:
        """Send the queued publishes, a pipeline at a time, until none are left."""
        try:
            while True:
                # Publishers cancelled while they waited are not sent at all.
                batch = [item for item in self._queued if not item.future.done()]
                self._queued = []
                if not batch:
                    return
                await self._send_pipeline(batch)
                await asyncio.sleep(0)  # let the publishers just answered queue their next ones
        except BaseException as exc:  # cancelled (or a bug): nobody may wait forever
            for item in self._queued:
                item.fail(exc)
            self._queued = []
            raise
        finally:
            self._sending = False
            self._flusher = None

    async def _send_pipeline(self, batch: list[_Queued]) -> None:
        seconds = self._link.socket_timeout
        try:
            pipe = self._link.redis.pipeline(transaction=False)
            for item in batch:
                pipe.xadd(item.stream, published(item.data), maxlen=self._maxlen)
            async with timeout(seconds):
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError as exc:  # nobody may wait forever
            for item in batch:
                item.fail(exc)
            raise
        except Exception as exc:  # the round trip failed: every publish in it did
            for item in batch:
                item.fail(exc, seconds)
            if failure(exc, "send queued publishes", seconds) is None:  # a bug, say
                log.warning("could not send %d queued publishes (%r)", len(batch), exc)
            return
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                item.fail(reply)
            elif not item.future.done():
                item.future.set_result(None)
