"""The Kafka adapter against the Kafka-compatible test broker (tansu; see docs/servers.md).

Group-join timings are *test* settings passed through ``consumer_options``: tansu holds a
JoinGroup for ``session_timeout_ms / 2``, so the library default (10 s) would make every
subscribe take 5 s. Apache Kafka refuses sessions under 6 s by default; nothing here is a
library default.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)

from eventbus import Context, Event, EventBus, Router
from eventbus.brokers import from_url
from eventbus.brokers.kafka import KafkaBroker, KafkaConsumer
from eventbus.brokers.kafka.topology import retry_group
from eventbus.envelope import Envelope, decode, to_binary, to_structured
from eventbus.errors import ConfigurationError, PermanentError, RetryLater
from eventbus.testing import BrokerContract, wait_until
from eventbus.testing.contract_lifecycle import _View
from eventbus.testing.telemetry import TelemetryContract
from eventbus.topics import pattern_regex, topic_matches
from eventbus.types import Broker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]
E = TypeVar("E", bound=Event)

TEST_CONSUMER = {
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 300,
    "metadata_max_age_ms": 500,
}
"""Fast group joins and topic discovery on tansu: test settings, not library defaults."""


async def uncommitted(url: str, group: str, topic: str) -> int:
    """How many records of ``topic`` lie beyond ``group``'s committed offsets."""
    reader = AIOKafkaConsumer(bootstrap_servers=url.removeprefix("kafka://"), group_id=group)
    await reader.start()
    try:
        parts = reader.partitions_for_topic(topic) or set()
        if not parts:
            await reader.topics()  # refresh the metadata once
            parts = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await reader.end_offsets(tps) if tps else {}
        left = 0
        for tp in tps:
            committed = await reader.committed(tp)
            left += ends[tp] - (committed or 0)
        return left
    finally:
        await reader.stop()


def make(url: str, **options: Any) -> KafkaBroker:
    options.setdefault("consumer_options", TEST_CONSUMER)
    broker = from_url(url, **options)
    assert isinstance(broker, KafkaBroker)
    return broker


def servers(url: str) -> str:
    return url.split("://", 1)[1]


class TestKafkaContract(BrokerContract, TelemetryContract):
    timeout = 20.0
    url: str

    @pytest.fixture(autouse=True)
    def _kafka(self, kafka_url: str) -> None:
        self.url = kafka_url

    async def make_broker(self) -> Broker:
        return make(self.url, nack_delay=0.2)

    def raw_header_value(self) -> Any:
        from hypothesis import strategies as st

        return st.one_of(st.text(max_size=40), st.binary(max_size=40), st.none())

    async def unsettled(self, broker: Broker, group: str, destination: str) -> int:
        """Records of the topic the group has not committed past."""
        return await uncommitted(self.url, group, destination)


# ---------------------------------------------------------------------------- unit level
@pytest.mark.parametrize(
    "pattern",
    ["a.*", "a.#", "#", "#.b", "a.#.b", "*.b.#", "#.#.c", "a.*.#", "*", "a-b.*"],
)
def test_pattern_regex_matches_like_the_router(pattern: str) -> None:
    import re

    regex = re.compile(pattern_regex(pattern, exclude_prefix="__"))
    topics = ["a", "b", "a.b", "a.c", "a.b.c", "x.b", "x.y.b", "a.x.y.b", "c", "a-b.x", "ab.c"]
    for topic in topics:
        assert bool(regex.match(topic)) == topic_matches(pattern, topic), (pattern, topic)
    assert not regex.match("__eventbus.dlq.a")


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="producer_options"):
        KafkaBroker("h:9092", linger_ms=5)
    with pytest.raises(ConfigurationError, match="group"):
        KafkaBroker("h:9092", consumer_options={"group_id": "x"})
    with pytest.raises(ConfigurationError, match="sasl_plain_username"):
        from_url("kafka://user:pw@h:9092")
    broker = from_url("kafka://a:1,b:2", sasl_mechanism="PLAIN", security_protocol="SASL_SSL")
    assert isinstance(broker, KafkaBroker)
    assert broker.bootstrap_servers == ["a:1", "b:2"]
    assert broker.producer_options["acks"] == "all"


async def test_topic_names_kafka_cannot_hold_are_refused(kafka_url: str) -> None:
    broker = make(kafka_url)
    await broker.connect()
    try:
        with pytest.raises(ConfigurationError, match="event_topic"):
            await broker.send_raw("a:b", b"x")
    finally:
        await broker.close()


# ---------------------------------------------------------------------------- wire format
class Signed(Event):
    user: str


class Aggregate(Event):
    n: int


def kind(base: type[E], event_type: str, topic: str | None = None) -> type[E]:
    """A subclass of ``base`` with its own event type (each test uses fresh topics)."""
    return type(base.__name__, (base,), {"event_type": event_type, "event_topic": topic})


async def test_wire_is_cloudevents_binary_with_key(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Signed, f"w{ns}.signed")
    consumer = AIOKafkaConsumer(
        event_cls.destination(), bootstrap_servers=servers(kafka_url), auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with EventBus(make(kafka_url), service="wire") as bus:
            sent = await bus.publish(event_cls(user="u1"), key="u1")
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    headers = dict(record.headers)
    assert record.key == b"u1"
    assert headers["ce_id"] == sent.id.encode()
    assert headers["ce_type"] == event_cls.event_type.encode()
    assert headers["ce_specversion"] == b"1.0"
    assert headers["content-type"] == b"application/json"
    assert record.value == sent.data


async def test_structured_mode_and_foreign_producers_are_read(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    got: list[Envelope] = []
    router = Router()

    @router.subscribe(f"s{ns}.thing")
    async def take(envelope: Envelope) -> None:
        got.append(envelope)

    one = Envelope(id="s-1", type=f"s{ns}.thing", source="/sdk", data=b'{"a":1}')
    two = Envelope(id="b-2", type=f"s{ns}.thing", source="/sdk", data=b'{"a":2}')
    async with EventBus(make(kafka_url), service="in", routers=[router]) as bus:
        producer = AIOKafkaProducer(bootstrap_servers=servers(kafka_url))
        await producer.start()
        try:
            structured = [("content-type", b"application/cloudevents+json")]
            await producer.send_and_wait(
                f"s{ns}.thing", to_structured(one), key=b"k", headers=structured
            )
            headers, body = to_binary(two)
            raw = [(k, v.encode()) for k, v in headers.items()]
            await producer.send_and_wait(f"s{ns}.thing", body, key=b"k2", headers=raw)
        finally:
            await producer.stop()
        await wait_until(lambda: len(got) == 2, timeout=15)
        assert bus.running
    by_id = {e.id: e for e in got}  # different keys, so maybe different partitions: any order
    assert sorted(by_id) == ["b-2", "s-1"]
    assert by_id["s-1"].partitionkey == "k"  # the record key, as the CloudEvents binding says
    assert by_id["b-2"].json() == {"a": 2}
    assert by_id["s-1"].json() == {"a": 1}


# ---------------------------------------------------------------------------- topology
async def test_several_types_share_one_topic_and_keep_key_order(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    created = kind(Aggregate, f"a{ns}.created", f"a{ns}-events")
    renamed = kind(Aggregate, f"a{ns}.renamed", f"a{ns}-events")
    seen: list[tuple[str, int]] = []
    router = Router()

    @router.subscribe(renamed)
    async def on_renamed(event: Aggregate, ctx: Context) -> None:
        seen.append((ctx.envelope.type, event.n))

    async with EventBus(make(kafka_url), service="agg", routers=[router]) as bus:
        for n in range(10):
            await bus.publish((created if n % 2 else renamed)(n=n), key="user-1")
        await wait_until(lambda: len(seen) == 5, timeout=15)
    assert seen == [(f"a{ns}.renamed", n) for n in range(0, 10, 2)]


async def test_retry_later_goes_through_a_retry_topic_with_metadata(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"r{ns}.x")
    seen: list[tuple[int, dict[str, str], str]] = []
    router = Router()

    @router.subscribe(event_cls, group=f"r{ns}-g")
    async def later(event: Aggregate, ctx: Context) -> None:
        delivery = ctx.delivery
        assert delivery is not None
        seen.append((ctx.attempt, dict(delivery.metadata), delivery.destination))
        if ctx.attempt == 1:
            delivery.metadata["first-failure-at"] = "2026-01-01T00:00:00+00:00"
            raise RetryLater(0.3)

    async with EventBus(make(kafka_url), service="rt", routers=[router], middleware=()) as bus:
        await bus.publish(event_cls(n=1), key="k")
        await wait_until(lambda: len(seen) == 2, timeout=15)
    assert seen[1] == (2, {"first-failure-at": "2026-01-01T00:00:00+00:00"}, f"r{ns}.x")


async def test_retry_topics_are_read_by_a_group_of_their_own(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    topic, group = f"e{ns}.x", f"e{ns}-g"
    event_cls = kind(Aggregate, topic)
    seen: list[int] = []
    router = Router()

    @router.subscribe(event_cls, group=group)
    async def later(event: Aggregate, ctx: Context) -> None:
        seen.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryLater(0)  # tier 0: due at once

    async with EventBus(make(kafka_url), service="e", routers=[router], middleware=()) as bus:
        consumer = bus._runners[0].consumer
        assert isinstance(consumer, KafkaConsumer)
        # The main topic's fetches carry its own partitions only.
        assert {tp.topic for tp in consumer.main.kafka.assignment()} == {topic}
        assert {tp.topic for tp in consumer.retries.kafka.assignment()} == {*consumer.retry_topics}
        assert (consumer.main.group_id, consumer.retries.group_id) == (
            group,
            retry_group(group, topic),
        )
        await bus.publish(event_cls(n=1), key="k")
        await wait_until(lambda: seen == [1, 2], timeout=15)
        # The copy is committed in the retry topics' group, the original in the main one.
        tier_0 = consumer.retry_topics[0]
        retries = consumer.retries.group_id
        await wait_until(lambda: _none_left(kafka_url, retries, tier_0), timeout=15)
        await wait_until(lambda: _none_left(kafka_url, group, topic), timeout=15)
        assert await bus.broker.lag(bus.subscriptions[0]) == 0  # type: ignore[attr-defined]


async def test_a_new_retry_group_reads_its_topics_from_the_start(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"n{ns}.x")
    seen: list[int] = []
    router = Router()

    @router.subscribe(event_cls, group=f"n{ns}-g")
    async def later(event: Aggregate, ctx: Context) -> None:
        seen.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryLater(1.5)

    async with EventBus(make(kafka_url), service="a", routers=[router], middleware=()) as bus:
        await bus.publish(event_cls(n=1), key="k")
        await wait_until(lambda: seen == [1], timeout=15)
    # Stopped before the copy was due: the retry group committed nothing. Under "latest" a new
    # group would start past the copy; the retry group reads its topics from the start anyway.
    latest = make(kafka_url, consumer_options={**TEST_CONSUMER, "auto_offset_reset": "latest"})
    async with EventBus(latest, service="b", routers=[router], middleware=()):
        await wait_until(lambda: seen == [1, 2], timeout=15)


async def _none_left(url: str, group: str, topic: str) -> bool:
    return await uncommitted(url, group, topic) == 0


async def test_retries_keep_flowing_while_the_main_topic_is_busy(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"f{ns}.x")
    handled: list[tuple[int, int]] = []  # (n, attempt), in the order handled
    router = Router()

    @router.subscribe(event_cls, group=f"f{ns}-g")
    async def once_more(event: Aggregate, ctx: Context) -> None:
        handled.append((event.n, ctx.attempt))
        if ctx.attempt == 1:
            raise RetryLater(0)  # each one writes its copy, awaited: the main topic stays busy

    broker = make(
        kafka_url,
        retry_poll_interval=0.05,
        consumer_options={**TEST_CONSUMER, "max_poll_records": 5},
    )
    async with EventBus(broker, service="f", routers=[router], middleware=()) as bus:
        await bus.publish_many([(event_cls(n=n), f"k{n}") for n in range(200)])
        await wait_until(lambda: len(handled) == 400, timeout=60)
        assert await bus.broker.lag(bus.subscriptions[0]) == 0  # type: ignore[attr-defined]
    assert sorted(handled) == [(n, attempt) for n in range(200) for attempt in (1, 2)]
    # Retries were taken between fetches of the main topic, not only once it fell idle.
    first_retry = next(i for i, (_, attempt) in enumerate(handled) if attempt == 2)
    last_original = max(i for i, (_, attempt) in enumerate(handled) if attempt == 1)
    assert first_retry < last_original


async def test_concurrent_publishes_share_produce_requests(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"c{ns}.x")
    async with EventBus(make(kafka_url), service="c") as bus:
        await bus.publish(event_cls(n=-1))  # metadata and connection ready
        client = bus.broker._producer.client  # type: ignore[attr-defined]
        answered: list[float] = []  # when each produce request was answered
        send = client.send

        async def counting(node_id: int, request: Any, **kwargs: Any) -> Any:
            response = await send(node_id, request, **kwargs)
            if type(request).__name__ == "ProduceRequest":
                answered.append(time.monotonic())
            return response

        async def publish(n: int) -> float:
            await bus.publish(event_cls(n=n))
            return time.monotonic()

        client.send = counting
        try:
            returned = await asyncio.gather(*(publish(n) for n in range(100)))
        finally:
            del client.send
        # The records handed over while a request was in flight went out together, and no
        # publish returned before the broker had answered (acks="all").
        assert 1 <= len(answered) <= 20
        assert min(returned) >= min(answered)


def fetch_sizes(consumer: KafkaConsumer) -> list[int]:
    """The number of records of each fetch of the main topic from now on (a spy on aiokafka)."""
    sizes: list[int] = []
    getmany = consumer.main.kafka.getmany

    async def spy(*args: Any, **kwargs: Any) -> Any:
        batch = await getmany(*args, **kwargs)
        sizes.append(sum(len(records) for records in batch.values()))
        return batch

    consumer.main.kafka.getmany = spy
    return sizes


async def test_max_poll_records_sets_the_records_per_fetch(kafka_url: str) -> None:
    assert make(kafka_url).max_records == 50
    broker = make(kafka_url, consumer_options={**TEST_CONSUMER, "max_poll_records": 7})
    assert broker.max_records == 7
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"m{ns}.x")
    got: list[int] = []
    router = Router()
    router.subscribe(event_cls, group=f"m{ns}-g")(_collect_n(got))
    async with EventBus(broker, service="m", routers=[router]) as bus:
        consumer = bus._runners[0].consumer
        assert isinstance(consumer, KafkaConsumer)
        sizes = fetch_sizes(consumer)
        await wait_until(lambda: bool(sizes), timeout=10)  # the fetch loop now calls the spy
        await bus.publish_many([(event_cls(n=n), "k") for n in range(20)])  # one partition
        await wait_until(lambda: len(got) == 20, timeout=15)
    assert got == list(range(20))
    assert max(sizes) == 7


async def test_an_iteration_stopped_inside_a_fetch_skips_nothing(kafka_url: str) -> None:
    """Records fetched but not handed out when an iteration stops (the bus's fetch loop
    resubscribing after an error, say) come in the next iteration, in order: the consumer
    seeks back to them, as nothing past them was handled."""
    ns = uuid.uuid4().hex[:8]
    topic, broker = f"i{ns}.x", make(kafka_url)
    await broker.connect()
    try:
        consumer = await broker.subscribe(_View(f"i{ns}-g", topic))
        assert isinstance(consumer, KafkaConsumer)
        fetched = fetch_sizes(consumer)
        sent = [  # one key: one partition, read in order
            Envelope(id=f"{ns}-{n}", type="x", source="t", data=b"{}", partitionkey="k")
            for n in range(10)
        ]
        await broker.publish_batch([(topic, envelope) for envelope in sent])
        first = aiter(consumer)
        taken = [await asyncio.wait_for(anext(first), 15) for _ in range(3)]
        assert sum(fetched) > 3, "the iteration is stopped inside a fetched batch"
        for delivery in taken:
            await delivery.ack()
        await first.aclose()  # type: ignore[attr-defined]
        again = aiter(consumer)
        rest = [await asyncio.wait_for(anext(again), 15) for _ in range(7)]
        seen = [d.envelope.id for d in (*taken, *rest) if d.envelope is not None]
        assert seen == [envelope.id for envelope in sent]
        for delivery in rest:
            await delivery.ack()
        await consumer.close()
    finally:
        await broker.close()


# ---------------------------------------------------------------------------- groups and offsets
async def test_partitions_split_across_two_consumers(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"p{ns}.x")
    by_bus: dict[str, list[int]] = {"one": [], "two": []}

    def router_for(name: str) -> Router:
        router = Router()

        @router.subscribe(event_cls, group=f"p{ns}-workers")
        async def work(event: Aggregate) -> None:
            by_bus[name].append(event.n)

        return router

    async with (
        EventBus(make(kafka_url), service="one", routers=[router_for("one")]) as one,
        EventBus(make(kafka_url), service="two", routers=[router_for("two")]),
    ):
        first = one._runners[0].consumer
        assert isinstance(first, KafkaConsumer)
        consumer: KafkaConsumer = first
        # Both members own some of the 4 partitions before anything is published.
        await wait_until(lambda: _main_partitions(consumer, f"p{ns}.x") in (1, 2, 3), timeout=15)
        for n in range(40):
            await one.publish(event_cls(n=n), key=f"key-{n}")
        await wait_until(lambda: len(by_bus["one"]) + len(by_bus["two"]) >= 40, timeout=15)
    assert by_bus["one"]
    assert by_bus["two"]
    assert sorted(by_bus["one"] + by_bus["two"]) == list(range(40))


def _main_partitions(consumer: KafkaConsumer, topic: str) -> int:
    return sum(1 for tp in consumer.main.parts if tp.topic == topic)


async def test_restart_resumes_from_the_committed_offset(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"o{ns}.x")
    got: list[int] = []
    router = Router()
    router.subscribe(event_cls, group=f"o{ns}-g")(_collect_n(got))
    async with EventBus(make(kafka_url), service="first", routers=[router]) as bus:
        for n in range(5):
            await bus.publish(event_cls(n=n), key="k")
        await wait_until(lambda: len(got) == 5, timeout=15)
    async with EventBus(make(kafka_url), service="producer") as producer:
        for n in range(5, 8):
            await producer.publish(event_cls(n=n), key="k")
    async with EventBus(make(kafka_url), service="second", routers=[router]) as bus:
        await wait_until(lambda: len(got) == 8, timeout=15)
    assert got == list(range(8))  # nothing twice, nothing skipped, in key order


def _collect_n(into: list[int]) -> Any:
    async def handler(event: Aggregate) -> None:
        into.append(event.n)

    return handler


async def test_commits_stop_at_the_lowest_unfinished_offset(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"l{ns}.x")
    release = asyncio.Event()
    done: list[int] = []
    router = Router()

    @router.subscribe(event_cls, group=f"l{ns}-g", concurrency=4)
    async def work(event: Aggregate) -> None:
        if event.n == 0:
            await release.wait()
        done.append(event.n)

    async with EventBus(
        make(kafka_url, producer_options={"linger_ms": 5}), service="l", routers=[router]
    ) as bus:
        # Different keys on one partition: the keyed dispatcher runs them in parallel.
        keys = _keys_on_one_partition(4)
        for n, key in enumerate(keys):
            await bus.publish(event_cls(n=n), key=key)
        await wait_until(lambda: len(done) == 3, timeout=15)
        consumer = bus._runners[0].consumer
        assert isinstance(consumer, KafkaConsumer)
        part = next(p for tp, p in consumer.main.parts.items() if tp.topic == f"l{ns}.x" and p.next)
        await wait_until(lambda: part.committed == min(part.inflight), timeout=5)
        assert part.inflight
        assert part.committed < (part.next or 0)  # not past message 0
        release.set()
        await wait_until(lambda: part.committed == part.next, timeout=5)


def _keys_on_one_partition(count: int, partitions: int = 4) -> list[str]:
    from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"key-{i}"
        if (murmur2(key.encode()) & 0x7FFFFFFF) % partitions == 0:
            keys.append(key)
        i += 1
    return keys


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from eventbus import Event, EventBus, Router

    class Slow(Event):
        event_type = sys.argv[2]
        n: int

    router = Router()

    # 8 of the 30 events hang; 10 slots leave 2 for the rest, so some always finish.
    @router.subscribe(Slow, group=sys.argv[3], concurrency=10)
    async def slow(event: Slow) -> None:
        print("start", event.n, flush=True)
        await asyncio.sleep(0.05 if event.n % 4 else 3600)  # some never finish
        print("done", event.n, flush=True)

    async def main() -> None:
        options = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 300}
        async with EventBus(sys.argv[1], service="victim", routers=[router],
                            consumer_options=options):
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_kill_9_mid_batch_loses_nothing(kafka_url: str, tmp_path: Any) -> None:
    ns = uuid.uuid4().hex[:8]
    event_type, group = f"k{ns}.slow", f"k{ns}-g"
    event_cls = kind(Aggregate, event_type)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), kafka_url, event_type, group, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    done: set[int] = set()
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        async with EventBus(make(kafka_url), service="feeder") as bus:
            await bus.publish_many([(event_cls(n=n), f"key-{n}") for n in range(30)])
        while len(done) < 8:  # killed mid-batch: some done, some hanging, some not taken
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            if line.startswith(b"done"):
                done.add(int(line.split()[1]))
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    rest = (await proc.stdout.read()).decode().splitlines()
    done |= {int(line.split()[1]) for line in rest if line.startswith("done")}
    unfinished = set(range(30)) - done
    assert {0, 4, 8} <= unfinished
    got: set[int] = set()
    router = Router()

    @router.subscribe(event_cls, group=group, concurrency=8)
    async def survivor(event: Aggregate) -> None:
        got.add(event.n)

    async with EventBus(make(kafka_url), service="survivor", routers=[router]):
        await wait_until(lambda: unfinished <= got, timeout=40, message=f"only {sorted(got)}")


# ---------------------------------------------------------------------------- dead letters
async def test_dead_letters_keep_provenance_and_key(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"d{ns}.x")
    router = Router()

    @router.subscribe(event_cls, group=f"d{ns}-g")
    async def refuse(event: Aggregate) -> None:
        raise PermanentError("rejected by the consumer")

    async with EventBus(make(kafka_url), service="d", routers=[router], middleware=()) as bus:
        sent = await bus.publish(event_cls(n=3), key="the-key")
        await wait_until(lambda: _count(bus, f"d{ns}-g", 1), timeout=15)
        (record,) = await bus.dead_letters.list(group=f"d{ns}-g")
        assert (record.reason, record.error_message) == (
            "permanent failure",
            "rejected by the consumer",
        )
        assert record.event_id == sent.id
        assert decode(record.headers, record.body).id == sent.id
        assert await bus.dead_letters.get(record.id) == record
        assert record in await bus.dead_letters.list()


async def _count(bus: EventBus, group: str, count: int) -> bool:
    return len(await bus.dead_letters.list(group=group)) >= count


@pytest.fixture
async def connected(kafka_url: str) -> AsyncIterator[KafkaBroker]:
    broker = make(kafka_url)
    await broker.connect()
    yield broker
    await broker.close()


async def test_rebalance_lets_in_flight_work_finish_and_commits_it(kafka_url: str) -> None:
    ns = uuid.uuid4().hex[:8]
    event_cls = kind(Aggregate, f"b{ns}.x")
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[int] = []
    router = Router()

    @router.subscribe(event_cls, group=f"b{ns}-g")
    async def slow(event: Aggregate) -> None:
        if event.n == 1:
            started.set()
            await release.wait()
        handled.append(event.n)

    async with EventBus(make(kafka_url), service="a", routers=[router]) as first:
        consumer = first._runners[0].consumer
        assert isinstance(consumer, KafkaConsumer)
        await first.publish(event_cls(n=1), key="k")
        await asyncio.wait_for(started.wait(), 15)
        generation = consumer.main.generation
        second = EventBus(make(kafka_url), service="b", routers=[router])
        joining = asyncio.ensure_future(second.start())
        await wait_until(lambda: consumer.main.generation != generation, timeout=15)  # revoking
        release.set()  # the in-flight handler finishes during the rebalance
        await asyncio.wait_for(joining, 30)
        try:  # whichever member owns the partition now sees n=2 next, not n=1 again
            await first.publish(event_cls(n=2), key="k")
            await wait_until(lambda: 2 in handled, timeout=15)
        finally:
            await second.stop()
    assert handled == [1, 2]  # n=1 was committed before its partition moved
