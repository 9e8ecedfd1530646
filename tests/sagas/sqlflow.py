"""Running a saga on SQL in one process, step by step: relay what committed, handle it, fire
what is due, until nothing moves."""

from __future__ import annotations

from eventbus import EventBus
from eventbus.outbox import OutboxRelay
from eventbus.sagas import SagaWorker


async def settle(bus: EventBus, relay: OutboxRelay, worker: SagaWorker, rounds: int = 50) -> None:
    for _ in range(rounds):
        await bus.drain()
        relayed = await relay.run_once()
        await bus.drain()
        fired = await worker.run_once()
        if not relayed and not fired:
            return
    raise AssertionError(f"the saga kept moving after {rounds} rounds")
