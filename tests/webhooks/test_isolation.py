"""One slow or dead endpoint never delays the others: per-endpoint concurrency (real
concurrent requests to real servers) and the circuit breaker (driven by the fake clock)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from eventbus.clock import FakeClock
from eventbus.testing import wait_until
from eventbus.webhooks import CircuitBreaker, RetrySchedule, WebhookSender, WebhookStore
from tests.webhooks.conftest import HANG, LOOPBACK, Receiver
from tests.webhooks.support import event

pytestmark = pytest.mark.anyio


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(
    store: WebhookStore, receiver: Receiver
) -> None:
    dead = await store.endpoints.add("acme", receiver.script("/dead", HANG), ["#"])
    await store.endpoints.add("globex", receiver.script("/alive", 200), ["#"])
    for _ in range(20):
        await store.take(event())
    sender = WebhookSender(store, guard=LOOPBACK, concurrency=2, timeout=30, poll_interval=0.05)
    await sender.start()
    await wait_until(lambda: len(receiver.to("/alive")) == 20, timeout=10)
    await wait_until(lambda: len(receiver.to("/dead")) == 2)
    assert len(receiver.to("/dead")) == 2, "the hanging endpoint holds only its own lane"
    await sender.stop(grace=0)
    waiting = await store.deliveries.list(endpoint_id=dead.id)
    assert len(waiting) == 20
    assert {(d.state, d.attempts) for d in waiting} == {("pending", 0)}, (
        "the attempts cut short by stop went back untried"
    )


async def test_the_circuit_opens_after_failures_and_lets_one_probe_through(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    failing = await store.endpoints.add("acme", receiver.script("/fail", 500), ["#"])
    await store.endpoints.add("globex", receiver.script("/fine", 200), ["#"])
    breaker = CircuitBreaker(failures=2, cooldown=60, max_cooldown=600)
    schedule = RetrySchedule(delays=(0, 1000), jitter=0)
    sender = WebhookSender(store, guard=LOOPBACK, concurrency=1, breaker=breaker, schedule=schedule)
    for _ in range(4):
        await store.take(event())
    assert await sender.run_once() == 4 + 2, "all of the healthy one, two of the failing one"
    assert len(receiver.to("/fail")) == 2
    await clock.advance(59)
    assert await sender.run_once() == 0, "open: nothing is attempted"
    await clock.advance(1)
    assert await sender.run_once() == 1, "half-open: one probe"
    await clock.advance(119)
    receiver.script("/fail", 200)
    assert await sender.run_once() == 0, "the failed probe opened it for twice as long"
    await clock.advance(1)
    assert await sender.run_once() == 1, "the probe succeeds and closes it"
    await sender.stop()
    states = [(d.state, d.attempts) for d in await store.deliveries.list(endpoint_id=failing.id)]
    assert sorted(states) == [("delivered", 1), ("pending", 1), ("pending", 1), ("pending", 1)]


async def test_two_senders_share_the_work_and_never_attempt_a_row_twice(
    store: WebhookStore, receiver: Receiver
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/shared", 200), ["#"])
    sent = [event() for _ in range(40)]
    for envelope in sent:
        await store.take(envelope)
    senders = [
        WebhookSender(store, guard=LOOPBACK, concurrency=3, poll_interval=0.05) for _ in range(2)
    ]
    for sender in senders:
        await sender.start()

    async def all_delivered() -> bool:
        found = await store.deliveries.list(endpoint_id=endpoint.id, state="delivered")
        return len(found) == len(sent)

    await wait_until(all_delivered, timeout=20)
    for sender in senders:
        await sender.stop()
    ids = [r.headers["webhook-id"] for r in receiver.to("/shared")]
    assert sorted(ids) == sorted(e.id for e in sent), "each row leased by one sender at a time"
    assert sum(s.attempts for s in senders) == len(sent)


async def test_an_idle_sender_on_postgresql_is_woken_by_the_commit_that_takes_an_event_in(
    postgres_url: str, receiver: Receiver
) -> None:
    """Another process takes the event in (here another engine and store on the same tables);
    the sender, polling only once a minute, delivers it at once."""
    engines = [create_async_engine(postgres_url) for _ in range(2)]
    prefix = f"wh_{uuid.uuid4().hex[:10]}"
    mine, theirs = (WebhookStore(engine, prefix=prefix) for engine in engines)
    await mine.create_tables()
    try:
        await mine.endpoints.add("acme", receiver.script("/woken", 200), ["#"])
        sender = WebhookSender(mine, guard=LOOPBACK, poll_interval=60)
        await sender.start()
        await wait_until(lambda: sender.rounds >= 1)  # it found nothing and waits
        await theirs.take(event())
        await wait_until(lambda: len(receiver.to("/woken")) == 1, timeout=10)
        await sender.stop()
    finally:
        await mine.drop_tables()
        for engine in engines:
            await engine.dispose()
