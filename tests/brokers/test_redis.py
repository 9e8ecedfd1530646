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
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from eventbus import Context, Event, EventBus, Next, Router
from eventbus.brokers import from_url
from eventbus.brokers.redis import RedisBroker
from eventbus.deadletters import FIRST_FAILURE_AT
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerUnavailable,
    ConfigurationError,
    PermanentError,
    PublishError,
    RetryLater,
)
from eventbus.testing import BrokerContract, wait_until
from eventbus.testing.telemetry import TelemetryContract
from eventbus.types import Broker
from tests.redissupport import delete_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def fast(url: str, **options: Any) -> RedisBroker:
    """An adapter that polls and reclaims quickly (short ``block`` and ``claim_interval``)."""
    return RedisBroker(url, block=0.2, claim_interval=0.2, **options)


class TestRedisContract(BrokerContract, TelemetryContract):
    @pytest.fixture(autouse=True)
    async def _redis(self, redis_url: str) -> AsyncIterator[None]:
        self.url = redis_url
        yield
        await delete_prefix(redis_url, f"ebtest:{self.ns}:")

    async def make_broker(self) -> Broker:
        # claim_idle: a message whose consumer died comes back within the suite's wait.
        return fast(self.url, prefix=f"ebtest:{self.ns}:", claim_idle=2.0)

    async def unsettled(self, broker: Broker, group: str, destination: str) -> int:
        """Entries of the group pending (read, not acked) or not read yet, on both streams."""
        prefix = f"ebtest:{self.ns}:"
        client = aioredis.Redis.from_url(self.url)
        left = 0
        async with client:
            for stream in (f"{prefix}{destination}", f"{prefix}{destination}~retry~{group}"):
                if not await client.exists(stream):
                    continue
                for info in await client.xinfo_groups(stream):
                    if info["name"].decode() == group:
                        left += int(info["pending"]) + int(info.get("lag") or 0)
        return left


class Job(Event):
    event_type = "redis.test.job"
    n: int


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


async def test_a_structured_entry_from_another_producer_keeps_its_data_as_written(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    """The payload reaches the handler byte for byte, as it does in Kafka's and RabbitMQ's
    binary mode, whitespace and escapes included."""
    router, got = Router(), list[Envelope]()

    @router.subscribe(Job.event_type, group="foreign")
    async def keep(envelope: Envelope) -> None:
        got.append(envelope)

    payload = b'{ "n": 3,\n  "note": "caf\\u00e9" }'
    document = (
        b'{"specversion": "1.0", "id": "f-1", "source": "elsewhere", "type": "'
        + Job.event_type.encode()
        + b'", "data": '
        + payload
        + b"}"
    )
    broker = fast(redis_url, prefix=prefix, start_from="earliest")
    async with EventBus(broker, routers=[router]):
        await raw.xadd(
            f"{prefix}{Job.event_type}",
            {"content-type": "application/cloudevents+json", "data": document},
        )
        await wait_until(lambda: len(got) == 1, timeout=10)
    assert (got[0].id, got[0].source, got[0].data) == ("f-1", "elsewhere", payload)
    assert json.loads(got[0].data) == {"n": 3, "note": "café"}


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


async def test_calls_are_bounded_by_redis_py_default_socket_timeout(redis_url: str) -> None:
    broker = RedisBroker(redis_url)
    await broker.connect()
    try:
        assert broker.socket_timeout == 5.0  # redis-py's default, applied by the adapter
        assert broker.redis.connection_pool.connection_kwargs["socket_timeout"] is None
    finally:
        await broker.close()


async def test_the_adapter_packs_its_own_client_with_hiredis_and_leaves_a_given_one(
    redis_url: str,
) -> None:
    """Commands of a client the adapter made are packed in C (same bytes, see
    test_redis_packing.py); a client passed in keeps the connection class it came with."""
    own = RedisBroker(redis_url)
    given = aioredis.Redis.from_url(redis_url)
    lent = RedisBroker(client=given)
    await own.connect()
    await lent.connect()
    try:
        pool = own.redis.connection_pool
        assert pool.connection_class is not Connection
        assert issubclass(pool.connection_class, Connection)
        assert await own.redis.ping()
        assert given.connection_pool.connection_class is Connection
    finally:
        await own.close()
        await lent.close()
        await given.aclose()


async def test_a_dead_letter_is_the_entry_with_its_provenance_as_fields(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    router = Router()

    @router.subscribe(Job, group="dead")
    async def refuse(event: Job) -> None:
        raise PermanentError("refused")

    dlq = f"{prefix}~dlq~dead"

    async def dead_lettered() -> bool:
        return await raw.xlen(dlq) == 1

    async with EventBus(fast(redis_url, prefix=prefix), routers=[router]) as bus:
        sent = await bus.publish(Job(n=1))
        await wait_until(dead_lettered, timeout=10)
        [record] = await bus.dead_letters.list(group="dead")
    entries: Any = await raw.xrange(dlq)
    [(_, fields)] = entries
    assert fields[b"content-type"] == b"application/cloudevents+json"  # the original fields
    assert json.loads(fields[b"data"])["id"] == sent.id  # and bytes
    assert fields[b"eventbus-dlq-id"] == record.id.encode()
    assert fields[b"eventbus-dlq-event-id"] == sent.id.encode()
    assert fields[b"eventbus-dlq-attempts"] == b"1"
    assert not {b"record", b"headers"} & set(fields)  # no JSON provenance


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
    first_failure = seen[1][1].pop(FIRST_FAILURE_AT)  # the bus stamps the first failure...
    assert seen[2][1].pop(FIRST_FAILURE_AT) == first_failure  # ...and Redis carries it on
    assert seen == [(1, {}), (2, {"first": "1"}), (3, {"first": "1"})]
    assert await raw.xlen(f"{prefix}{Job.event_type}~retry~carry") == 0  # copies deleted on ack
    assert await raw.zcard(f"{prefix}~delayed") == 0


# ---------------------------------------------------------------- publishing and acking hot paths
class _RoundTrips:
    """Counts what a client sends: single commands and pipelines (with their commands)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.commands: list[str] = []
        self.pipelines: list[list[str]] = []
        execute_command: Any = client.execute_command
        make_pipeline = client.pipeline

        async def counted_command(*args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]))
            return await execute_command(*args, **options)

        def counted_pipeline(*args: Any, **options: Any) -> Any:
            pipe = make_pipeline(*args, **options)
            execute = pipe.execute

            async def counted_execute(*a: Any, **o: Any) -> Any:
                self.pipelines.append([str(c[0][0]) for c in pipe.command_stack])
                return await execute(*a, **o)

            pipe.execute = counted_execute  # type: ignore[method-assign]
            return pipe

        client.execute_command = counted_command  # type: ignore[method-assign]
        client.pipeline = counted_pipeline  # type: ignore[method-assign]

    @property
    def round_trips(self) -> int:
        return len(self.commands) + len(self.pipelines)


async def _connected(url: str, prefix: str, **options: Any) -> tuple[RedisBroker, _RoundTrips]:
    broker = RedisBroker(url, prefix=prefix, **options)
    await broker.connect()
    return broker, _RoundTrips(broker.redis)


def _envelope(n: int) -> Envelope:
    return Envelope(
        id=f"e-{n}", type=Job.event_type, source="t", data=json.dumps({"n": n}).encode()
    )


async def test_concurrent_publishes_share_one_round_trip_on_one_connection(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    name = f"ebtest-{uuid.uuid4().hex[:8]}"
    broker, spy = await _connected(redis_url, prefix, client_name=name)
    stream = f"{prefix}{Job.event_type}"
    confirmed: list[int] = []

    async def publish(n: int) -> None:
        await broker.publish(Job.event_type, _envelope(n))
        # Returned: Redis has it already (the publish was answered, not just queued).
        entries: Any = await raw.xrange(stream)
        assert f"e-{n}" in {json.loads(fields[b"data"])["id"] for _, fields in entries}
        confirmed.append(n)

    try:
        await asyncio.gather(*(publish(n) for n in range(50)))
        # The first goes out alone; the 49 that came meanwhile share one pipeline.
        assert spy.commands == ["XADD"]
        assert spy.pipelines == [["XADD"] * 49]
        clients = [c for c in await raw.client_list() if c.get("name") == name]
        assert len(clients) == 1  # one connection for all of them
    finally:
        await broker.close()
    entries: Any = await raw.xrange(stream)
    ids = sorted(json.loads(fields[b"data"])["id"] for _, fields in entries)
    assert ids == sorted(f"e-{n}" for n in range(50))
    assert sorted(confirmed) == list(range(50))


async def test_a_refused_publish_in_a_shared_pipeline_fails_only_that_publisher(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    broker, _ = await _connected(redis_url, prefix)
    await raw.set(f"{prefix}not-a-stream", "x")  # XADD to it: WRONGTYPE
    try:
        results = await asyncio.gather(
            *(
                broker.publish("not-a-stream" if n % 2 else Job.event_type, _envelope(n))
                for n in range(10)
            ),
            return_exceptions=True,
        )
    finally:
        await broker.close()
    assert results[0::2] == [None] * 5
    assert all(isinstance(r, PublishError) and "WRONGTYPE" in str(r) for r in results[1::2])
    assert await raw.xlen(f"{prefix}{Job.event_type}") == 5


async def test_a_failed_round_trip_fails_every_publisher_waiting_on_it(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, _ = await _connected(redis_url, prefix)

    async def broken(self: Any, raise_on_error: bool = True) -> list[Any]:
        raise RedisConnectionError("connection reset by peer")

    try:
        first = asyncio.ensure_future(broker.publish(Job.event_type, _envelope(0)))
        await asyncio.sleep(0)  # the first is on its way, alone
        monkeypatch.setattr(aioredis.client.Pipeline, "execute", broken)
        waiting = [
            asyncio.ensure_future(broker.publish(Job.event_type, _envelope(n)))
            for n in range(1, 10)
        ]
        await first
        results = await asyncio.gather(*waiting, return_exceptions=True)
    finally:
        monkeypatch.undo()
        await broker.close()
    assert all(isinstance(r, BrokerUnavailable) for r in results), results
    assert {str(r).split(":")[0] for r in results} == {
        f"could not publish e-{n} to {Job.event_type!r}" for n in range(1, 10)
    }


async def test_a_publisher_cancelled_while_waiting_is_not_sent(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    broker, _ = await _connected(redis_url, prefix)
    try:
        tasks = [
            asyncio.ensure_future(broker.publish(Job.event_type, _envelope(n))) for n in range(5)
        ]
        await asyncio.sleep(0)  # all started: the first is sent, four wait
        tasks[3].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await broker.close()
    assert isinstance(results[3], asyncio.CancelledError)
    entries: Any = await raw.xrange(f"{prefix}{Job.event_type}")
    assert sorted(json.loads(f[b"data"])["id"] for _, f in entries) == ["e-0", "e-1", "e-2", "e-4"]


async def test_a_batch_read_is_acked_with_one_xack_and_nothing_stays_pending(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    router, got = Router(), list[Job]()
    router.subscribe(Job, group="acks")(got.append)
    broker = fast(redis_url, prefix=prefix, batch_size=100, start_from="earliest")
    async with EventBus(broker, routers=[router]) as bus:
        spy = _RoundTrips(broker.redis)
        scripted: list[Any] = []
        ack_script = broker.scripts["ack"]

        async def counted_ack_script(**kwargs: Any) -> Any:
            scripted.append(kwargs)
            return await ack_script(**kwargs)

        broker.scripts["ack"] = counted_ack_script  # type: ignore[assignment]
        await bus.publish_many([Job(n=n) for n in range(40)])
        await wait_until(lambda: len(got) == 40, timeout=10)

        async def nothing_pending() -> bool:
            return await _pending(raw, prefix, "acks") == 0

        await wait_until(nothing_pending, timeout=10)  # acked while running, not at shutdown
        assert 1 <= spy.commands.count("XACK") <= 3  # one per batch read, not one per event
        assert not scripted  # a plain ack of a main-stream entry needs no script
    assert await _pending(raw, prefix, "acks") == 0


async def test_acks_of_concurrent_handlers_are_sent_while_the_reader_blocks(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    router, got = Router(), list[Job]()

    @router.subscribe(Job, group="conc", concurrency=4)
    async def work(event: Job) -> None:
        await asyncio.sleep(0.01)
        got.append(event)

    broker = RedisBroker(redis_url, prefix=prefix, block=5.0, socket_timeout=10.0)
    async with EventBus(broker, routers=[router]) as bus:
        for n in range(8):
            await bus.publish(Job(n=n))
        await wait_until(lambda: len(got) == 8, timeout=10)

        async def nothing_pending() -> bool:
            return await _pending(raw, prefix, "conc") == 0

        await wait_until(nothing_pending, timeout=2.0)  # well before the 5 s read returns


async def test_every_call_is_bounded_by_socket_timeout() -> None:
    """The adapter applies ``socket_timeout`` itself (redis-py's connections get none)."""
    done = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # a "server" that accepts and never answers
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, block=0.1)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BrokerUnavailable, match=r"within 0\.3s"):
            await broker.connect()
        assert asyncio.get_running_loop().time() - started < 3
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_stopping_right_after_a_handler_returns_is_prompt(
    redis_url: str, prefix: str
) -> None:
    """The consumer is then sending its next blocking read; shutdown must not wait it out."""
    for _ in range(3):
        router, got = Router(), list[Job]()
        router.subscribe(Job, group="prompt")(got.append)
        bus = EventBus(RedisBroker(redis_url, prefix=prefix, block=3.0), routers=[router])
        await bus.start()
        await bus.publish(Job(n=1))
        await wait_until(lambda: len(got) == 1, timeout=10)  # noqa: B023 (awaited right here)
        started = asyncio.get_running_loop().time()
        await bus.stop()
        assert asyncio.get_running_loop().time() - started < 1.5


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
