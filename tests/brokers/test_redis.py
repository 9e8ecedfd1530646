"""The Redis Streams adapter against a real Redis: the conformance suite, then Redis specifics.

Every test writes under a key prefix of its own and deletes its keys afterwards, so the shared
server is left as it was found. Crash recovery kills a consumer process for real; the restart
test runs a private ``redis-server`` on a free port (never the shared one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from eventbus import Context, Event, EventBus, Router
from eventbus.brokers import from_url
from eventbus.brokers.redis import RedisBroker
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, RetryLater
from eventbus.testing import BrokerContract, wait_until
from eventbus.types import Broker, Next

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def fast(url: str, **options: Any) -> RedisBroker:
    """An adapter that polls and reclaims quickly (short ``block`` and ``claim_interval``)."""
    return RedisBroker(url, block=0.2, claim_interval=0.2, **options)


async def _delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)


class TestRedisContract(BrokerContract):
    @pytest.fixture(autouse=True)
    async def _redis(self, redis_url: str) -> AsyncIterator[None]:
        self.url = redis_url
        yield
        await _delete_prefix(redis_url, f"ebtest:{self.ns}:")

    async def make_broker(self) -> Broker:
        return fast(self.url, prefix=f"ebtest:{self.ns}:")


class Job(Event):
    event_type = "redis.test.job"
    n: int


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    name = f"ebtest:{uuid.uuid4().hex[:10]}:"
    yield name
    await _delete_prefix(redis_url, name)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    async with client:
        yield client


async def _pending(raw: aioredis.Redis, prefix: str, group: str) -> int:
    """Entries still pending for ``group`` on the Job stream and its retry stream."""
    total = 0
    for key in (f"{prefix}{Job.event_type}", f"{prefix}{Job.event_type}~retry~{group}"):
        total += int((await raw.xpending(key, group))["pending"])
    return total


# ---------------------------------------------------------------- wire format and configuration
async def test_entry_holds_the_structured_cloudevent_in_data(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    async with EventBus(RedisBroker(redis_url, prefix=prefix), service="wire") as bus:
        sent = await bus.publish(Job(n=3), key="k")
    entries: Any = await raw.xrange(f"{prefix}{Job.event_type}")
    [(_, fields)] = entries
    assert fields[b"content-type"] == b"application/cloudevents+json"
    document = json.loads(fields[b"data"])
    assert (document["id"], document["type"], document["partitionkey"]) == (
        sent.id,
        Job.event_type,
        "k",
    )
    assert document["data"] == {"n": 3}


async def test_patterns_are_refused_at_subscribe_time(redis_url: str, prefix: str) -> None:
    router = Router()

    @router.subscribe("redis.test.*")
    async def anything(envelope: Envelope) -> None: ...

    with pytest.raises(ConfigurationError, match="no topic routing"):
        async with EventBus(RedisBroker(redis_url, prefix=prefix), routers=[router]):
            pass


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'socket_timeout'"):
        from_url("redis://127.0.0.1:6379/0", socket_timout=3)
    with pytest.raises(ConfigurationError, match="longer than block"):
        RedisBroker(socket_timeout=1.0, block=2.0)
    with pytest.raises(ConfigurationError, match="start_from"):
        RedisBroker(start_from="beginning")


# ---------------------------------------------------------------- groups, nack, delays
async def test_two_consumers_in_a_group_split_the_work(redis_url: str, prefix: str) -> None:
    got: dict[str, list[int]] = {"a": [], "b": []}

    def router_for(name: str) -> Router:
        router = Router()

        @router.subscribe(Job, group="workers")
        async def work(event: Job) -> None:
            got[name].append(event.n)
            await asyncio.sleep(0.005)  # hold the consumer busy, so the other one reads

        return router

    def broker() -> RedisBroker:
        return fast(redis_url, prefix=prefix, batch_size=1)

    async with (
        EventBus(broker(), service="a", routers=[router_for("a")]) as bus,
        EventBus(broker(), service="b", routers=[router_for("b")]),
    ):
        for n in range(40):
            await bus.publish(Job(n=n))
        await wait_until(lambda: len(got["a"]) + len(got["b"]) >= 40, timeout=10)
    assert sorted(got["a"] + got["b"]) == list(range(40))  # each exactly once
    assert got["a"], "consumer a got nothing"
    assert got["b"], "consumer b got nothing"


async def test_nack_and_delay_carry_attempt_and_metadata_and_leave_nothing_pending(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    seen: list[tuple[int, dict[str, str]]] = []

    async def note(ctx: Context, call_next: Next) -> None:
        assert ctx.delivery is not None
        seen.append((ctx.attempt, dict(ctx.delivery.metadata)))
        ctx.delivery.metadata.setdefault("first", str(ctx.attempt))
        await call_next(ctx)

    router = Router()

    @router.subscribe(Job, group="carry")
    async def flaky(event: Job, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("nacked")
        if ctx.attempt == 2:
            raise RetryLater(0.05)

    broker = fast(redis_url, prefix=prefix)
    async with EventBus(broker, routers=[router], middleware=[note]) as bus:
        await bus.publish(Job(n=1))
        await wait_until(lambda: len(seen) == 3, timeout=10)
        assert await _pending(raw, prefix, "carry") == 0
    assert seen == [(1, {}), (2, {"first": "1"}), (3, {"first": "1"})]
    assert await raw.xlen(f"{prefix}{Job.event_type}~retry~carry") == 0  # copies deleted on ack
    assert await raw.zcard(f"{prefix}~delayed") == 0


# ---------------------------------------------------------------- crash recovery
_KILLED_CONSUMER = """
import asyncio, sys
from eventbus.brokers.redis import RedisBroker
from eventbus.envelope import Envelope
from eventbus.envelope import Envelope
from eventbus.router import Router

async def main(url, prefix, count):
    router = Router()

    @router.subscribe("redis.test.job", group="crash")
    async def never_called(envelope: Envelope) -> None: ...

    broker = RedisBroker(url, prefix=prefix, batch_size=count)
    await broker.connect()
    consumer = await broker.subscribe(router.subscriptions[0])
    deliveries = aiter(consumer)
    for _ in range(count):
        await anext(deliveries)
    print("took", count, flush=True)
    await asyncio.Event().wait()  # handling "forever": killed with SIGKILL, nothing acked

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_a_consumer_killed_mid_batch_loses_nothing(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    router = Router()
    handled: list[tuple[int, int]] = []

    @router.subscribe(Job, group="crash")
    async def work(event: Job, ctx: Context) -> None:
        handled.append((event.n, ctx.attempt))

    def broker() -> RedisBroker:
        return fast(redis_url, prefix=prefix, claim_idle=0.3)

    producer_broker = broker()
    async with EventBus(producer_broker, service="producer") as producer:
        await producer_broker.create_group(f"{prefix}{Job.event_type}", "crash", "$")
        await producer_broker.create_group(f"{prefix}{Job.event_type}~retry~crash", "crash", "0")
        await producer.publish_many([Job(n=n) for n in range(10)])
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_CONSUMER, redis_url, prefix, "10",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert victim.stdout is not None
        line = await asyncio.wait_for(victim.stdout.readline(), 30)
        assert line.strip() == b"took 10"
    finally:
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
    assert await _pending(raw, prefix, "crash") == 10  # all of them in the dead consumer's hands
    async with EventBus(broker(), service="survivor", routers=[router]):
        await wait_until(lambda: len(handled) >= 10, timeout=10)
    assert sorted(n for n, _ in handled) == list(range(10))
    assert all(attempt == 2 for _, attempt in handled)  # the dead consumer had them first
    assert await _pending(raw, prefix, "crash") == 0


async def _kill_clients(raw: aioredis.Redis, name: str) -> int:
    killed = 0
    for client in await raw.client_list():
        if client.get("name") == name:
            await raw.client_kill_filter(_id=client["id"])
            killed += 1
    return killed


async def test_a_connection_drop_is_survived(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    router, got = Router(), list[Job]()
    router.subscribe(Job, group="drop")(got.append)
    name = f"ebtest-{uuid.uuid4().hex[:8]}"
    broker = fast(redis_url, prefix=prefix, client_name=name)
    async with EventBus(broker, routers=[router]) as bus:
        await bus.publish(Job(n=0))
        await wait_until(lambda: len(got) == 1, timeout=10)
        assert await _kill_clients(raw, name) >= 1  # the consumer's blocking read among them
        for n in range(1, 6):
            await bus.publish(Job(n=n))
        await wait_until(lambda: len(got) == 6, timeout=10)
    assert sorted(e.n for e in got) == list(range(6))


# ---------------------------------------------------------------- a private server restarted
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _private_redis(tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    """A redis-server of this test's own with AOF fsync always; yields (url, stop, start)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed; run scripts/services install redis")
    port = _free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip
    process: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                return
            process[-1].poll()
            assert process[-1].returncode is None, "the private redis-server exited"
            subprocess.run(["sleep", "0.01"], check=True)  # a start-up poll, not a sync point
        raise TimeoutError("the private redis-server did not start")

    def stop() -> None:
        process[-1].send_signal(signal.SIGTERM)  # SIGTERM: AOF is fsynced, the server exits
        process[-1].wait(10)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", stop, start
    finally:
        for proc in process:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.slow
async def test_a_redis_restart_is_survived_without_losing_published_events(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The outage outlasts redis-py's own retries, so the consumer's recovery path runs too."""
    del redis_url  # only to skip/fail with the others when Redis is not installed
    caplog.set_level(logging.WARNING, logger="eventbus.redis")
    with _private_redis(tmp_path) as (url, stop, start):
        live, late = Router(), Router()
        got: list[Job] = []
        stored: list[Job] = []
        live.subscribe(Job, group="live")(got.append)
        late.subscribe(Job, group="late")(stored.append)
        async with EventBus(fast(url), routers=[late]):
            pass  # creates the "late" group; its events wait in the stream from now on
        async with EventBus(fast(url), routers=[live]) as bus:
            for n in range(5):
                await bus.publish(Job(n=n))
            await wait_until(lambda: len(got) == 5, timeout=10)
            await asyncio.to_thread(stop)
            await wait_until(lambda: "reading again" in caplog.text, timeout=20)
            await asyncio.to_thread(start)
            for n in range(5, 10):
                await bus.publish(Job(n=n))  # redis-py reconnects with backoff
            await wait_until(lambda: len(got) == 10, timeout=20)
        async with EventBus(fast(url), routers=[late]):
            await wait_until(lambda: len(stored) == 10, timeout=10)
    assert sorted(e.n for e in got) == list(range(10))
    assert sorted(e.n for e in stored) == list(range(10))
