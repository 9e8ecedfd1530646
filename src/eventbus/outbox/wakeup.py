"""Waking an idle relay: PostgreSQL ``LISTEN`` when it can, a poll interval always.

Staging sends ``NOTIFY`` (delivered when the transaction commits); the relay listens on one
connection of its own, through the driver SQLAlchemy uses (asyncpg). A notification lost — the
listening connection dropped, a driver other than asyncpg — costs latency only: the relay also
looks every ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["Wakeup"]

log = logging.getLogger("eventbus.outbox")


class Wakeup:
    def __init__(self, engine: AsyncEngine, channel: str) -> None:
        self.engine, self.channel = engine, channel
        self._event = asyncio.Event()
        self._connection: AsyncConnection | None = None
        self._raw: Any = None

    async def start(self) -> None:
        if self.engine.dialect.name != "postgresql" or self.engine.dialect.driver != "asyncpg":
            return
        try:
            connection = await self.engine.connect()
            raw: Any = (await connection.get_raw_connection()).driver_connection
            await raw.add_listener(self.channel, self._notified)
        except Exception as exc:  # polling still finds every row: only latency is lost
            log.warning("outbox relay cannot LISTEN on %s (%r); polling only", self.channel, exc)
            return
        self._connection, self._raw = connection, raw

    def _notified(self, *args: Any) -> None:
        self._event.set()

    def signal(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until a commit signals (or :meth:`signal`), at most ``timeout`` seconds."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await self._raw.remove_listener(self.channel, self._notified)
            except Exception as exc:  # a dropped connection took the listener with it
                log.debug("outbox relay: removing the listener failed (%r)", exc)
            await connection.close()
