"""``SagaWorker``: fires the timers of sagas — their timeouts and their compensations.

Timers are rows (or, in memory, entries) written with the transition that asked for them, so
they outlive the process: a worker started after a crash finds the due ones and fires them.
Each fires in its own transaction (see :meth:`Engine.on_timer`); a timer that another worker
fired or a transition cancelled meanwhile is gone, and firing it does nothing. Several
workers may run against one database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from eventbus.context import Publisher
from eventbus.errors import ConfigurationError
from eventbus.lifecycle import Lifecycle
from eventbus.sagas.records import SagaConflict, Timer
from eventbus.sagas.saga import Saga

__all__ = ["SagaWorker"]

log = logging.getLogger("eventbus.sagas")


class SagaWorker(Lifecycle):
    """Fires the due timers of ``sagas`` through ``bus`` (which publishes what they cause).

    In the background (:meth:`start`, or ``async with``) it looks every ``poll_interval``
    seconds of the sagas' clock; :meth:`run_once` fires what is due now, for tests and for
    scheduling it yourself. All the sagas must share one store and one clock.
    """

    def __init__(
        self,
        bus: Publisher,
        sagas: Iterable[Saga[Any]],
        *,
        poll_interval: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self.bus, self.sagas = bus, {s.name: s for s in sagas}
        if not self.sagas:
            raise ConfigurationError("SagaWorker needs at least one saga")
        stores = {id(s.store) for s in self.sagas.values()}
        clocks = {id(s.clock) for s in self.sagas.values()}
        if len(stores) > 1 or len(clocks) > 1 or None in (s.store for s in self.sagas.values()):
            raise ConfigurationError(
                "the sagas of one SagaWorker share one store and one clock: give each "
                "store its own worker"
            )
        if not poll_interval > 0 or batch_size < 1:
            raise ConfigurationError("poll_interval must be > 0 seconds and batch_size >= 1")
        first = next(iter(self.sagas.values()))
        self.store, self.clock = first.engine.store, first.clock
        self.poll_interval, self.batch_size = poll_interval, batch_size
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Fire every timer due now (and those their firing makes due at once, such as the
        next compensation); returns how many fired."""
        fired = 0
        while True:
            due = await self.store.due(list(self.sagas), self.clock.now(), self.batch_size)
            done = [await self._fire(timer) for timer in due]
            fired += sum(done)
            if not any(done):
                return fired

    async def _fire(self, timer: Timer) -> bool:
        try:
            return await self.sagas[timer.saga].engine.on_timer(self.bus, timer)
        except SagaConflict as exc:  # the instance moved on: the timer is still there
            log.info("saga timer %s %s of %r: %s", timer.kind, timer.name, timer.key, exc)
            return False

    async def start(self) -> None:
        """Fire due timers in the background until :meth:`stop`."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="eventbus:saga-worker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the database went away, say: never end the worker for it
                log.exception("saga worker round failed; trying again")
            await self.clock.sleep(self.poll_interval)
