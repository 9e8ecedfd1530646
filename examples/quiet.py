"""Waiting until an example app has nothing left to do: shared by both apps' runners."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import EventBus
from eventbus.outbox import Outbox
from eventbus.testing import wait_until


async def until_quiet(
    bus: EventBus, outbox: Outbox, engine: AsyncEngine, timeout: float = 30
) -> None:
    """Until the outbox holds nothing unpublished and every published event has been handled
    and settled (exact on the memory bus, which ``bus.drain()`` waits on).

    The outbox is read before and after the drain: empty before, everything staged so far is
    on the bus; empty after, the handlers the drain waited for staged nothing new.
    """

    async def quiet() -> bool:
        before = (await outbox.backlog(engine)).pending
        await bus.drain()
        return before == 0 and (await outbox.backlog(engine)).pending == 0

    await wait_until(quiet, timeout=timeout, message=f"the app did not settle within {timeout}s")
