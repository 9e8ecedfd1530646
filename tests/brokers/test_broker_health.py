"""``bus.health()`` on the real brokers: the lag while a handler is blocked, exact where the
broker counts exactly, then 0 once everything is handled; an outage and the recovery.

Every test uses names of its own (a fresh Redis prefix, ``ns``-named queues and topics) and
cleans up what it declared. Outages go through a TCP proxy the test cuts, never by stopping
the shared servers (Kafka is left out: its clients connect to the addresses the cluster
advertises, past any proxy).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from eventbus import Event, EventBus, Router
from eventbus.brokers.kafka import KafkaBroker
from eventbus.brokers.rabbitmq import RabbitMQBroker
from eventbus.brokers.redis import RedisBroker
from eventbus.health import SubscriptionHealth
from eventbus.testing import wait_until
from tests.brokers.test_kafka import make as kafka_broker
from tests.brokers.test_rabbitmq import Proxy, _cleanup, via

pytestmark = pytest.mark.anyio


class Job(Event):
    n: int


@pytest.fixture
def ns() -> str:
    return f"h{uuid.uuid4().hex[:10]}"


def job_type(ns: str) -> type[Job]:
    return type(f"Job_{ns}", (Job,), {"event_type": f"{ns}.job"})


LagIs = Callable[[int], Awaitable[bool]]


async def health_follows_a_blocked_handler(
    bus: EventBus, event_cls: type[Job], count: int
) -> LagIs:
    """Publish ``count`` events while the handler is blocked; returns ``lag_is(n)``."""

    async def only() -> SubscriptionHealth:
        [sub] = (await bus.health(timeout=5)).subscriptions
        return sub

    async def lag_is(expected: int) -> bool:
        return (await only()).lag == expected

    async def delivered() -> bool:
        return (await only()).last_delivery_at is not None

    first = await only()
    assert (first.connected, first.running, first.lag, first.last_delivery_at) == (
        True,
        True,
        0,
        None,
    )
    for n in range(count):
        await bus.publish(event_cls(n=n))
    await wait_until(delivered, timeout=20)
    return lag_is


def blocked_router(
    event_cls: type[Job], group: str, gate: asyncio.Event, into: list[int]
) -> Router:
    router = Router()

    @router.subscribe(event_cls, group=group)
    async def handle(event: Job) -> None:
        await gate.wait()
        into.append(event.n)

    return router


async def until_handled_and_caught_up(
    bus: EventBus, gate: asyncio.Event, handled: list[int], lag_is: LagIs, count: int
) -> None:
    gate.set()
    await wait_until(lambda: len(handled) == count, timeout=30)
    await wait_until(lambda: lag_is(0), timeout=30)
    health = await bus.health(timeout=5)
    assert health.ready
    assert health.subscriptions[0].last_delivery_at is not None


async def connected(bus: EventBus) -> bool:
    return all(sub.connected for sub in (await bus.health(timeout=1)).subscriptions)


async def disconnected(bus: EventBus) -> bool:
    health = await bus.health(timeout=1)
    return not health.ready and all(s.lag is None and s.running for s in health.subscriptions)


async def reports_an_outage_and_the_recovery(bus: EventBus, proxy: Proxy) -> None:
    """Health says connected, then (the proxy cut) disconnected, then (restored) connected."""
    assert await connected(bus)
    await proxy.cut()
    await wait_until(lambda: disconnected(bus), timeout=20)
    await proxy.start()
    await wait_until(lambda: connected(bus), timeout=20)


@pytest.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()  # a test that failed half-way must not leave its handler blocked on stop


def proxy_for(url: str) -> Proxy:
    parts = urlsplit(url)
    return Proxy(parts.hostname or "127.0.0.1", parts.port or 0)


# ---------------------------------------------------------------------------- Redis
@pytest.mark.redis
async def test_redis_health_reports_lag_then_catches_up(
    redis_url: str, prefix: str, ns: str, gate: asyncio.Event
) -> None:
    event_cls, handled = job_type(ns), list[int]()
    router = blocked_router(event_cls, f"{ns}-g", gate, handled)
    broker = RedisBroker(redis_url, prefix=prefix, block=0.2, claim_interval=0.2)
    async with EventBus(broker, service=ns, routers=[router]) as bus:
        lag_is = await health_follows_a_blocked_handler(bus, event_cls, 5)
        assert await lag_is(5)  # exact: read and pending, or not read yet
        await until_handled_and_caught_up(bus, gate, handled, lag_is, 5)


@pytest.mark.redis
async def test_redis_health_reports_an_outage_and_the_recovery(
    redis_url: str, prefix: str, ns: str, gate: asyncio.Event
) -> None:
    proxy = proxy_for(redis_url)
    await proxy.start()
    try:
        router = blocked_router(job_type(ns), f"{ns}-g", gate, [])
        broker = RedisBroker(via(redis_url, proxy), prefix=prefix, block=0.2, socket_timeout=1)
        async with EventBus(broker, service=ns, routers=[router]) as bus:
            await reports_an_outage_and_the_recovery(bus, proxy)
    finally:
        await proxy.close()


# ---------------------------------------------------------------------------- RabbitMQ
@pytest.fixture
async def rabbit_brokers(rabbitmq_url: str) -> AsyncIterator[list[RabbitMQBroker]]:
    made: list[RabbitMQBroker] = []
    yield made
    for broker in made:
        await broker.close()
    await _cleanup(rabbitmq_url, made)


@pytest.mark.rabbitmq
async def test_rabbitmq_health_reports_lag_then_catches_up(
    rabbitmq_url: str, rabbit_brokers: list[RabbitMQBroker], ns: str, gate: asyncio.Event
) -> None:
    event_cls, handled = job_type(ns), list[int]()
    router = blocked_router(event_cls, f"{ns}-g", gate, handled)
    broker = RabbitMQBroker(rabbitmq_url, prefetch=2)
    rabbit_brokers.append(broker)
    async with EventBus(broker, service=ns, routers=[router], shutdown_timeout=2) as bus:
        lag_is = await health_follows_a_blocked_handler(bus, event_cls, 6)
        # Ready messages only: the consumer holds ``prefetch`` of them unacknowledged.
        await wait_until(lambda: lag_is(6 - 2), timeout=20)
        await until_handled_and_caught_up(bus, gate, handled, lag_is, 6)


@pytest.mark.rabbitmq
async def test_rabbitmq_health_reports_an_outage_and_the_recovery(
    rabbitmq_url: str, rabbit_brokers: list[RabbitMQBroker], ns: str, gate: asyncio.Event
) -> None:
    proxy = proxy_for(rabbitmq_url)
    await proxy.start()
    try:
        router = blocked_router(job_type(ns), f"{ns}-g", gate, [])
        broker = RabbitMQBroker(via(rabbitmq_url, proxy), reconnect_interval=0.2)
        rabbit_brokers.append(broker)
        async with EventBus(broker, service=ns, routers=[router], shutdown_timeout=2) as bus:
            await reports_an_outage_and_the_recovery(bus, proxy)
    finally:
        await proxy.close()


# ---------------------------------------------------------------------------- Kafka
@pytest.mark.kafka
async def test_kafka_health_reports_lag_then_catches_up(
    kafka_url: str, ns: str, gate: asyncio.Event
) -> None:
    event_cls, handled = job_type(ns), list[int]()
    router = blocked_router(event_cls, f"{ns}-g", gate, handled)
    broker: KafkaBroker = kafka_broker(kafka_url)
    async with EventBus(broker, service=ns, routers=[router], shutdown_timeout=2) as bus:
        lag_is = await health_follows_a_blocked_handler(bus, event_cls, 5)
        assert await lag_is(5)  # exact: nothing is committed while the first one runs
        await until_handled_and_caught_up(bus, gate, handled, lag_is, 5)
