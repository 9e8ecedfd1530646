"""Random failures, duplicates, redeliveries and replays on the memory broker.

Invariant: every published event is handled successfully exactly once, or is in the DLQ —
never lost, never both. Handlers fail by a plan fixed per event (counted across all of its
copies): *healthy* events fail fewer times than the retry budget allows and must be handled
once; *poison* events (permanent errors, or failing for ever) must end in the DLQ and never
be handled. Time only moves when a rule advances the fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventbus import (
    Context,
    Envelope,
    Event,
    EventBus,
    Middleware,
    PermanentError,
    Router,
    TransientError,
)
from eventbus.brokers.memory import MemoryBroker
from eventbus.clock import FakeClock
from eventbus.middleware import Idempotency, MemoryIdempotencyStore, Retry
from tests.middleware.mwsupport import settle

T = TypeVar("T")
TRIES, DELAYS = 2, (1.0, 10.0)
BUDGET = TRIES * (1 + len(DELAYS))  # failing tries a healthy event may need, at most


class Payment(Event):
    payment_id: str


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.plans: dict[str, tuple[str, int]] = {}  # payment id -> (kind, failures)
        self.failed: collections.Counter[str] = collections.Counter()
        self.handled: collections.Counter[str] = collections.Counter()  # by event id
        self.sent: list[Envelope] = []
        self.kinds: dict[str, str] = {}  # event id -> kind
        self.raw = 0
        self.ids = itertools.count()
        middleware: list[Middleware] = [
            Retry(tries=TRIES, delays=DELAYS, backoff=0.5, jitter=0.5),
            Idempotency(MemoryIdempotencyStore(clock=self.clock), lease=30),
        ]
        self.bus = EventBus(
            "memory://",
            routers=[self._router()],
            clock=self.clock,
            middleware=middleware,
            shutdown_timeout=1,
        )
        self.run(self.bus.start())

    def _router(self) -> Router:
        router = Router()

        @router.subscribe(Payment, group="ledger", concurrency=2)
        async def book(event: Payment, ctx: Context) -> None:
            kind, failures = self.plans[event.payment_id]
            if kind == "permanent":
                raise PermanentError("rejected")
            if kind == "forever" or self.failed[event.payment_id] < failures:
                self.failed[event.payment_id] += 1
                raise (TransientError if self.failed[event.payment_id] % 2 else OSError)("down")
            self.handled[ctx.envelope.id] += 1

        return router

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def broker(self) -> MemoryBroker:
        assert isinstance(self.bus.broker, MemoryBroker)
        return self.bus.broker

    # ------------------------------------------------------------------ rules
    @rule(
        kind=st.sampled_from(["healthy", "healthy", "permanent", "forever"]),
        failures=st.integers(0, BUDGET - 1),
        key=st.sampled_from(["a", "b", "c"]),
    )
    def publish(self, kind: str, failures: int, key: str) -> None:
        payment_id = f"p{next(self.ids)}"
        self.plans[payment_id] = (kind, failures)
        envelope = self.run(self.bus.publish(Payment(payment_id=payment_id), key=key))
        self.sent.append(envelope)
        self.kinds[envelope.id] = kind

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """The broker (or a producer retry) delivers an event a second time."""
        envelope = data.draw(st.sampled_from(self.sent))
        self.run(self.bus.publish_envelope(envelope))

    @rule()
    def undecodable(self) -> None:
        self.raw += 1
        self.run(self.broker.send_raw("Payment", b"\x00garbage", {"ce_type": "Payment"}))

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.run(self.clock.advance(seconds))

    @rule(turns=st.integers(1, 20))
    def let_consumers_run(self, turns: int) -> None:
        for _ in range(turns):
            self.run(asyncio.sleep(0))

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        records = self.run(self.bus.dead_letters.list())
        if records:
            self.run(self.bus.dead_letters.replay(data.draw(st.sampled_from(records)).id))

    # ------------------------------------------------------------------ invariants
    @invariant()
    def never_twice_never_both_never_poison(self) -> None:
        dead = {r.event_id for r in self.run(self.bus.dead_letters.list(limit=10**6))}
        for event_id, count in self.handled.items():
            assert count == 1, f"{event_id} handled {count} times"
            assert self.kinds[event_id] == "healthy", f"poison {event_id} was handled"
            assert event_id not in dead, f"{event_id} was handled and dead-lettered"

    def teardown(self) -> None:
        try:
            self.run(settle(self.bus, self.clock, step=100.0))
            records = self.run(self.bus.dead_letters.list(limit=10**6))
            dead = collections.Counter(r.event_id for r in records)
            for event_id, kind in self.kinds.items():
                if kind == "healthy":
                    assert self.handled[event_id] == 1, f"healthy {event_id} was lost"
                    assert dead[event_id] == 0
                else:
                    assert dead[event_id] >= 1, f"poison {event_id} is not in the DLQ"
                    assert self.handled[event_id] == 0
            assert dead[None] == self.raw
        finally:
            self.run(self.bus.stop())
            self.loop.close()


DeliveryMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDeliveryInvariants = DeliveryMachine.TestCase
