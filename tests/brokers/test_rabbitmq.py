"""The RabbitMQ adapter against the real server: the conformance suite, then its own topology.

Every test uses names of its own (``ns``) and deletes the queues it declared, so the shared
server is left as it was found (the shared ``eventbus`` exchange stays). Reconnects are tested
through a TCP proxy this module controls, never by restarting the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aio_pika
import aiormq
import pytest

from eventbus import Context, Event, EventBus, Router
from eventbus.brokers import from_url
from eventbus.brokers.rabbitmq import RabbitMQBroker, RabbitMQDelivery, queue_name
from eventbus.deadletters import DeadLetterStore
from eventbus.envelope import Envelope, to_structured
from eventbus.errors import BrokerUnavailable, ConfigurationError, PermanentError, PublishError
from eventbus.router import Subscription
from eventbus.testing import BrokerContract, wait_until
from eventbus.testing.telemetry import TelemetryContract
from eventbus.types import Broker

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]

_made: list[RabbitMQBroker] = []


async def queue_depth(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def _cleanup(
    url: str, brokers: list[RabbitMQBroker], exchanges: tuple[str, ...] = ()
) -> None:
    """Delete the queues (work, dlq) and exchanges the given brokers declared."""
    queues = {q for b in brokers for dlq in b.dead_letters._queues for q in (dlq, dlq[:-4])}
    brokers.clear()
    if not queues and not exchanges:
        return
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in sorted(queues):
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)


class TestRabbitMQContract(BrokerContract, TelemetryContract):
    @pytest.fixture(autouse=True)
    async def _server(self, rabbitmq_url: str) -> AsyncIterator[None]:
        self.url = rabbitmq_url
        yield
        await _cleanup(rabbitmq_url, _made)

    async def make_broker(self) -> Broker:
        broker = RabbitMQBroker(self.url)
        _made.append(broker)
        return broker

    def raw_header_value(self) -> Any:
        """What aio-pika, the raw producer here, can put in a header table: no ``bytes``, and
        floats only as 32-bit ones (wider doubles from other clients: tests/test_decoding.py)."""
        from hypothesis import strategies as st

        return st.one_of(
            st.text(max_size=40),
            st.binary(max_size=40).map(bytearray),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.floats(allow_nan=False, width=32),
            st.booleans(),
            st.none(),
            st.lists(st.text(max_size=8), max_size=3),
            st.dictionaries(st.text(max_size=8), st.integers(0, 100), max_size=3),
        )

    def telemetry_names(self, bus: Any, sent: Envelope, group: str) -> tuple[str, str]:
        """The conventions' RabbitMQ names: ``exchange:key`` sent, ``exchange:key:queue``
        handled (the adapter's exchange is ``eventbus``, a group's queue ``group.topic``)."""
        return f"eventbus:{sent.type}", f"eventbus:{sent.type}:{group}.{sent.type}"

    async def unsettled(self, broker: Broker, group: str, destination: str) -> int:
        """Messages left in the group's queue (unacknowledged ones are back in it by now)."""
        return await queue_depth(self.url, queue_name(group, destination))


# ------------------------------------------------------------------------------ helpers
@pytest.fixture
def ns() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def brokers(rabbitmq_url: str) -> AsyncIterator[list[RabbitMQBroker]]:
    made: list[RabbitMQBroker] = []
    yield made
    for broker in made:
        await broker.close()
    await _cleanup(rabbitmq_url, made)


class Thing(Event):
    n: int = 0


def event_class(type_name: str) -> type[Thing]:
    """A ``Thing`` whose event type is ``type_name``."""
    return type(f"Thing_{abs(hash(type_name))}", (Thing,), {"event_type": type_name})


def collect(into: list[Any]) -> Any:
    async def handler(envelope: Envelope, ctx: Context) -> None:
        into.append((envelope, ctx.attempt))

    return handler


def subscription(topic: str, group: str, concurrency: int = 1) -> Subscription:
    router = Router()
    router.subscribe(topic, group=group, concurrency=concurrency)(collect([]))
    return router.subscriptions[0]


async def make(url: str, brokers: list[RabbitMQBroker], **options: Any) -> RabbitMQBroker:
    broker = RabbitMQBroker(url, **options)
    brokers.append(broker)
    await broker.connect()
    return broker


@contextlib.asynccontextmanager
async def bus(broker: RabbitMQBroker, *routers: Router, service: str) -> AsyncIterator[EventBus]:
    async with EventBus(broker, service=service, routers=routers, shutdown_timeout=2) as running:
        yield running


async def next_delivery(iterator: AsyncIterator[Any]) -> RabbitMQDelivery:
    delivery: RabbitMQDelivery = await asyncio.wait_for(iterator.__anext__(), 10)
    return delivery


def has_dead_letters(store: DeadLetterStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await store.list())

    return check


# ------------------------------------------------------------------------------ topology
async def test_domain_exchanges_route_patterns_to_each_service(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    """The topology note: ``auth.events`` exchange, ``auth.#`` and ``auth.user.*`` bindings."""
    options = {"exchange": lambda destination: destination.split(".")[0] + ".events"}
    audit: list[Any] = []
    catalog: list[Any] = []
    audit_router, catalog_router = Router(), Router()
    audit_router.subscribe(f"{ns}.#", group=f"{ns}-audit")(collect(audit))
    catalog_router.subscribe(f"{ns}.user.*", group=f"{ns}-catalog")(collect(catalog))
    producer = await make(rabbitmq_url, brokers, **options)
    async with (
        bus(await make(rabbitmq_url, brokers, **options), audit_router, service="audit"),
        bus(await make(rabbitmq_url, brokers, **options), catalog_router, service="catalog"),
        bus(producer, service="auth") as auth,
    ):
        for name in ("user.created", "user.deactivated", "role.updated", "user.profile.x"):
            await auth.publish(event_class(f"{ns}.{name}")())
        await wait_until(lambda: len(audit) == 4 and len(catalog) == 2, timeout=10)
    assert sorted(e.type for e, _ in catalog) == [f"{ns}.user.created", f"{ns}.user.deactivated"]
    async with await aio_pika.connect(rabbitmq_url) as connection:
        channel = await connection.channel()
        await channel.declare_exchange(f"{ns}.events", passive=True)  # the domain exchange
    await _cleanup(rabbitmq_url, [], (f"{ns}.events",))


async def test_fan_out_to_several_services_and_competing_consumers(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    got: dict[str, list[Any]] = {"billing": [], "email-1": [], "email-2": []}
    routers = {}
    for name, items in got.items():
        router = Router()
        group = f"{ns}-{name.split('-')[0]}"
        router.subscribe(f"{ns}.order.placed", group=group)(collect(items))
        routers[name] = router
    placed = event_class(f"{ns}.order.placed")
    async with contextlib.AsyncExitStack() as stack:
        for name, router in routers.items():
            broker = await make(rabbitmq_url, brokers)
            await stack.enter_async_context(bus(broker, router, service=name))
        producer = await stack.enter_async_context(
            bus(await make(rabbitmq_url, brokers), service="orders")
        )
        await producer.publish_many([placed(n=n) for n in range(40)])
        await wait_until(
            lambda: len(got["billing"]) == 40 and len(got["email-1"]) + len(got["email-2"]) >= 40
        )
    email = [e.id for e, _ in got["email-1"] + got["email-2"]]
    assert len(email) == len(set(email)) == 40  # each event once within the group
    assert got["email-1"]
    assert got["email-2"]


def test_queue_names_are_readable_and_legal() -> None:
    assert queue_name("audit", "auth.#") == "audit.auth.#"
    assert queue_name("catalog", "auth.user.*") == "catalog.auth.user.+"
    odd = queue_name("my group!", "a.b")
    assert odd.startswith("my group_.a.b-")
    assert odd != queue_name("my group?", "a.b")
    assert len(queue_name("g" * 300, "x").encode()) <= 255 - 24
    assert not queue_name("amq.x", "t").startswith("amq.")


# ------------------------------------------------------------------------------ wire format
async def test_wire_format_is_the_rabbitmq_cloudevents_binding(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    broker = await make(rabbitmq_url, brokers)
    consumer = await broker.subscribe(subscription(f"{ns}.wire", f"{ns}-g"))
    envelope = Envelope(
        id="e-1", type=f"{ns}.wire", source="/auth", data=b'{"a":1}', correlationid="c-1"
    )
    await broker.publish(f"{ns}.wire", envelope)
    raw = await next_delivery(aiter(consumer))
    message = raw._message
    assert message.content_type == "application/json"
    assert message.message_id == "e-1"
    assert message.correlation_id == "c-1"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers["ce-type"] == f"{ns}.wire"
    assert message.headers["ce-id"] == "e-1"
    assert message.routing_key == f"{ns}.wire"
    assert raw.destination == f"{ns}.wire"
    assert raw.envelope is not None
    assert raw.envelope.data == b'{"a":1}'
    await raw.ack()
    await consumer.close()


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:", "ce_", "structured"])
async def test_other_cloudevents_forms_are_accepted(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str, prefix: str
) -> None:
    broker = await make(rabbitmq_url, brokers)
    consumer = await broker.subscribe(subscription(f"{ns}.in", f"{ns}-g"))
    envelope = Envelope(id="x-1", type=f"{ns}.in", source="/sdk", data=b'{"b":2}')
    if prefix == "structured":
        channel = await broker.connection.channel()
        exchange = await channel.get_exchange("eventbus")
        content_type = "application/cloudevents+json"
        message = aio_pika.Message(to_structured(envelope), content_type=content_type)
        await exchange.publish(message, f"{ns}.in")
    else:
        headers = {f"{prefix}{k}": str(v) for k, v in envelope.attributes().items()}
        await broker.send_raw(f"{ns}.in", envelope.data, headers)
    delivery = await next_delivery(aiter(consumer))
    assert delivery.envelope is not None, delivery.decode_error
    assert (delivery.envelope.id, delivery.envelope.data) == ("x-1", b'{"b":2}')
    await delivery.ack()
    await consumer.close()


# ------------------------------------------------------------------------------ publishing
async def test_unroutable_publish_raises_unless_mandatory_is_off(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    envelope = Envelope(id="u-1", type=f"{ns}.nobody", source="/t")
    broker = await make(rabbitmq_url, brokers)
    with pytest.raises(PublishError, match=f"no queue is bound for routing key '{ns}.nobody'"):
        await broker.publish(f"{ns}.nobody", envelope)
    relaxed = await make(rabbitmq_url, brokers, mandatory=False)
    await relaxed.publish(f"{ns}.nobody", envelope)  # dropped by RabbitMQ, as asked


async def test_concurrent_publishes_pipeline_and_each_waits_for_its_own_confirm(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    """100 publishes at once travel together on the one publishing channel (many confirms
    outstanding at a time), and each returns only with its own outcome: confirmed and stored,
    or returned because nobody is bound for it."""
    broker = await make(rabbitmq_url, brokers)
    consumer = await broker.subscribe(subscription(f"{ns}.p", f"{ns}-g"))
    await broker.publish(f"{ns}.p", Envelope(id="p-warm", type=f"{ns}.p", source="/t"))
    channel = cast(aiormq.Channel, await broker._publishing().underlay())
    peak, done = 0, False

    async def watch() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, len(channel.confirmations))
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    results = await asyncio.gather(
        *(
            broker.publish(
                f"{ns}.nobody" if n % 10 == 0 else f"{ns}.p",
                Envelope(id=f"p-{n}", type=f"{ns}.p", source="/t"),
            )
            for n in range(100)
        ),
        return_exceptions=True,
    )
    done = True
    await watcher
    assert [n for n, r in enumerate(results) if isinstance(r, PublishError)] == list(
        range(0, 100, 10)
    )
    assert all(r is None for n, r in enumerate(results) if n % 10)
    assert peak >= 10, "publishes went out one at a time"
    stored: set[str] = set()
    deliveries = aiter(consumer)
    while len(stored) < 91:
        delivery = await next_delivery(deliveries)
        assert delivery.envelope is not None
        stored.add(delivery.envelope.id)
        await delivery.ack()
    assert stored == {"p-warm", *(f"p-{n}" for n in range(100) if n % 10)}
    await consumer.close()


async def test_an_inline_consumer_coalesces_acks_but_never_over_an_unsettled_delivery(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While more deliveries are buffered, acks go out as one ``multiple`` ack per run; a
    delivery whose settling failed stays unacked (RabbitMQ delivers it again) although later
    ones are acked, and acks still held back are sent when the consumer closes."""
    broker = await make(rabbitmq_url, brokers, prefetch=40)
    sub = subscription(f"{ns}.a", f"{ns}-g")
    consumer = await broker.subscribe(sub)
    channel = await consumer.channel.get_underlay_channel()
    acks: list[tuple[int, bool]] = []
    basic_ack = channel.basic_ack

    async def recording(delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        acks.append((delivery_tag, multiple))
        await basic_ack(delivery_tag, multiple=multiple, wait=wait)

    monkeypatch.setattr(channel, "basic_ack", recording)
    send, failing = broker.send, False

    async def send_unless_failing(*args: Any, **kwargs: Any) -> None:
        if failing:
            raise BrokerUnavailable("RabbitMQ is not reachable (simulated)")
        await send(*args, **kwargs)

    monkeypatch.setattr(broker, "send", send_unless_failing)
    for n in range(30):
        await broker.publish(f"{ns}.a", Envelope(id=f"a-{n}", type=f"{ns}.a", source="/t"))
    await wait_until(lambda: consumer._buffer.qsize() == 30)
    deliveries = aiter(consumer)
    for n in range(30):
        delivery = await anext(deliveries)
        if n == 12:  # tag 13: its requeued copy cannot be sent, so it stays unsettled
            failing = True
            with pytest.raises(BrokerUnavailable):
                await delivery.nack()
            failing = False
        else:
            await delivery.ack()
    await consumer.close()
    acked = {t for tag, multiple in acks for t in (range(1, tag + 1) if multiple else [tag])}
    assert acked == set(range(1, 31)) - {13}
    assert not any(multiple and tag >= 13 for tag, multiple in acks)
    assert len([tag for tag, _ in acks if tag <= 12]) < 12  # coalesced while buffered
    consumer = await broker.subscribe(sub)
    again = await next_delivery(aiter(consumer))
    assert again.envelope is not None
    assert (again.envelope.id, again.attempt) == ("a-12", 2)
    await again.ack()
    await consumer.close()
    async with await aio_pika.connect(rabbitmq_url) as connection:
        queue = await (await connection.channel()).declare_queue(
            queue_name(f"{ns}-g", f"{ns}.a"), passive=True
        )
        assert queue.declaration_result.message_count == 0


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="publish_timeout"):
        RabbitMQBroker(publish_timeout=0)
    with pytest.raises(ConfigurationError, match="exchange"):
        RabbitMQBroker(exchange="")
    with pytest.raises(ConfigurationError, match="quorum"):
        RabbitMQBroker(quorum="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="prefetch"):
        RabbitMQBroker(prefetch=0)
    broker = from_url("amqps://u:p@host:5671/vh", exchange="auth.events")
    assert isinstance(broker, RabbitMQBroker)
    assert broker.exchange_for("x") == "auth.events"


async def test_an_existing_queue_with_other_arguments_is_a_configuration_error(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    broker = await make(rabbitmq_url, brokers)
    channel = await broker.connection.channel()
    await channel.declare_queue(queue_name(f"{ns}-g", f"{ns}.t"), durable=False)
    try:
        with pytest.raises(ConfigurationError, match="exists with other arguments"):
            await broker.subscribe(subscription(f"{ns}.t", f"{ns}-g"))
    finally:
        channel = await broker.connection.channel()
        await channel.queue_delete(queue_name(f"{ns}-g", f"{ns}.t"))
        await channel.queue_delete(queue_name(f"{ns}-g", f"{ns}.t") + ".dlq")


# ------------------------------------------------------------------------------ redelivery
@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
async def test_attempt_and_metadata_survive_nack_retry_later_and_close(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str, quorum: bool
) -> None:
    broker = await make(rabbitmq_url, brokers, quorum=quorum)
    sub = subscription(f"{ns}.r", f"{ns}-g")
    consumer = await broker.subscribe(sub)
    await broker.publish(f"{ns}.r", Envelope(id="m-1", type=f"{ns}.r", source="/t"))
    deliveries = aiter(consumer)
    first = await next_delivery(deliveries)
    assert (first.attempt, first.metadata) == (1, {})
    first.metadata["first-failure-at"] = "2026-01-01T00:00:00+00:00"
    await first.retry_later(0.2)
    second = await next_delivery(deliveries)
    assert second.attempt == 2
    assert second.metadata["first-failure-at"].startswith("2026")
    assert second.destination == f"{ns}.r"
    assert any(d.get("reason") == "expired" for d in second.headers["x-death"])
    second.metadata["note"] = "x"
    await second.nack()
    third = await next_delivery(deliveries)
    assert third.attempt == 3
    assert third.metadata["note"] == "x"
    await consumer.close()  # unsettled: handed back to RabbitMQ
    consumer = await broker.subscribe(sub)
    fourth = await next_delivery(aiter(consumer))
    assert fourth.attempt == 4
    assert fourth.envelope is not None
    assert fourth.envelope.id == "m-1"
    await fourth.ack()
    await consumer.close()


# ------------------------------------------------------------------------------ dead letters
async def test_dead_letters_keep_provenance_and_x_death_and_replay(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    router, handled = Router(), []
    fail = {"on": True}

    @router.subscribe(f"{ns}.dl", group=f"{ns}-dl")
    async def handler(envelope: Envelope, ctx: Context) -> None:
        if fail["on"] and ctx.attempt == 1:
            from eventbus.errors import RetryLater

            raise RetryLater(0.1)
        if fail["on"]:
            raise PermanentError("still broken")
        handled.append((envelope.id, ctx.attempt))

    broker = await make(rabbitmq_url, brokers)
    async with bus(broker, router, service="svc") as running:
        sent = await running.publish(event_class(f"{ns}.dl")(n=1))
        await wait_until(has_dead_letters(running.dead_letters), timeout=10)
        records = await running.dead_letters.list(group=f"{ns}-dl")
        assert len(await running.dead_letters.list()) == 1  # listing consumed nothing
        record = records[0]
        assert (record.event_id, record.attempts, record.group) == (sent.id, 2, f"{ns}-dl")
        assert record.destination == f"{ns}.dl"
        assert record.error_message == "still broken"
        assert record.first_failure_at is not None
        assert record.last_failure_at is not None
        assert record.headers["x-death"][0]["reason"] == "expired"  # RabbitMQ's own history
        assert await running.dead_letters.get(record.id) == record
        fail["on"] = False
        await running.dead_letters.replay(record.id)
        await wait_until(lambda: handled == [(sent.id, 1)], timeout=10)
        assert await running.dead_letters.list() == []


async def test_a_native_reject_is_listed_from_x_death(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str
) -> None:
    """Another client rejects the message without requeue: RabbitMQ dead-letters it itself."""
    broker = await make(rabbitmq_url, brokers)
    await (await broker.subscribe(subscription(f"{ns}.rej", f"{ns}-g"))).close()
    await broker.publish(f"{ns}.rej", Envelope(id="r-1", type=f"{ns}.rej", source="/t"))
    async with await aio_pika.connect(rabbitmq_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name(f"{ns}-g", f"{ns}.rej"), ensure=False)
        message = await queue.get(timeout=10)
        assert message is not None
        await message.reject(requeue=False)
    await wait_until(has_dead_letters(broker.dead_letters), timeout=10)
    [record] = await broker.dead_letters.list()
    assert record.event_id == "r-1"
    assert record.reason.startswith("rejected")
    assert record.destination == f"{ns}.rej"
    assert record.group == f"{ns}-g"
    assert await broker.dead_letters.purge() == 1


# ------------------------------------------------------------------------------ reconnect
class Proxy:
    """A TCP proxy to RabbitMQ that the test can cut (drop every connection, refuse new ones)
    and restore, on the same port: a broker outage as the client sees it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._links += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()


@pytest.fixture
async def proxy(rabbitmq_url: str) -> AsyncIterator[Proxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(rabbitmq_url)
    running = Proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await running.start()
    yield running
    await running.close()


def via(url: str, proxy: Proxy) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")).geturl()


async def acked_on_the_broker(running: EventBus, broker: RabbitMQBroker) -> None:
    """Return once the acks the bus has sent have reached RabbitMQ.

    ``drain`` returns when the handlers are done and their acks written; a request answered
    over the same connection afterwards (frames of one connection arrive in order) proves they
    got there. An ack still on its way when the connection is cut is lost with it, and RabbitMQ
    redelivers the message (at-least-once), which a test counting deliveries must not race.
    """
    await running.drain()
    channel = await broker.connection.channel(publisher_confirms=False)
    await channel.close()


async def test_consumers_and_publishes_survive_a_connection_loss(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str, proxy: Proxy
) -> None:
    got: list[Any] = []
    router = Router()
    router.subscribe(f"{ns}.up", group=f"{ns}-g")(collect(got))
    broker = await make(via(rabbitmq_url, proxy), brokers, reconnect_interval=0.2)
    is_up = broker.connection.connected
    thing = event_class(f"{ns}.up")
    async with bus(broker, router, service="svc") as running:
        await running.publish(thing(n=1))
        await wait_until(lambda: len(got) == 1)
        await acked_on_the_broker(running, broker)  # else the cut may lose it: 1 comes again
        await proxy.cut()
        await wait_until(lambda: not is_up.is_set(), timeout=10)
        during = asyncio.ensure_future(running.publish(thing(n=2)))  # the broker is away
        await proxy.start()
        await asyncio.wait_for(during, 10)  # went through once the connection was back
        await running.publish(thing(n=3))
        await wait_until(lambda: len(got) == 3, timeout=15)  # the consumer came back by itself
    assert sorted(e.json()["n"] for e, _ in got) == [1, 2, 3]


async def test_a_delivery_taken_before_a_reconnect_is_not_settled_after_it(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str, proxy: Proxy
) -> None:
    """Its delivery tag means nothing on the restored channel (acking it there would settle the
    redelivered copy, whose own ack then closes the channel: PRECONDITION_FAILED), and RabbitMQ
    redelivers it anyway; a nack must not republish a copy either (a duplicate)."""
    broker = await make(via(rabbitmq_url, proxy), brokers, reconnect_interval=0.2)
    is_up = broker.connection.connected
    consumer = await broker.subscribe(subscription(f"{ns}.old", f"{ns}-g"))
    deliveries = aiter(consumer)
    for n in (1, 2):
        await broker.publish(f"{ns}.old", Envelope(id=f"o-{n}", type=f"{ns}.old", source="/t"))
    first, second = await next_delivery(deliveries), await next_delivery(deliveries)
    await proxy.cut()
    await wait_until(lambda: not is_up.is_set(), timeout=10)
    await proxy.start()
    await wait_until(lambda: is_up.is_set(), timeout=10)
    with pytest.raises(BrokerUnavailable, match="deliver it again"):
        await first.ack()
    with pytest.raises(BrokerUnavailable, match="deliver it again"):
        await second.nack()
    again = [await next_delivery(deliveries), await next_delivery(deliveries)]
    assert sorted((d.envelope.id, d.attempt) for d in again if d.envelope) == [
        ("o-1", 2),
        ("o-2", 2),
    ]
    for delivery in again:
        await delivery.ack()  # the restored channel stays open: no stale tag was sent on it
    await broker.publish(f"{ns}.old", Envelope(id="o-3", type=f"{ns}.old", source="/t"))
    third = await next_delivery(deliveries)  # no republished copy of o-2 came before it
    assert third.envelope is not None
    assert third.envelope.id == "o-3"
    await third.ack()
    await consumer.close()


async def test_a_publish_during_a_long_outage_raises_instead_of_vanishing(
    rabbitmq_url: str, brokers: list[RabbitMQBroker], ns: str, proxy: Proxy
) -> None:
    broker = await make(
        via(rabbitmq_url, proxy), brokers, reconnect_interval=0.2, publish_timeout=1.0
    )
    is_up = broker.connection.connected
    await broker.subscribe(subscription(f"{ns}.gone", f"{ns}-g"))
    await proxy.cut()
    await wait_until(lambda: not is_up.is_set(), timeout=10)
    with pytest.raises(BrokerUnavailable, match="publish it again"):
        await broker.publish(f"{ns}.gone", Envelope(id="g-1", type=f"{ns}.gone", source="/t"))
    await proxy.start()
    await wait_until(lambda: is_up.is_set(), timeout=10)


# ------------------------------------------------------------------------------ restart
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRabbit:
    """A RabbitMQ node of this test's own (own dirs, node name, ports and epmd), so it can be
    restarted without touching the shared server. Durable data stays in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, dist, self.epmd_port = free_port(), free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.node: asyncio.subprocess.Process | None = None
        self.epmd: asyncio.subprocess.Process | None = None
        for sub in ("home", "log", "mnesia"):
            (directory / sub).mkdir()
        cookie = directory / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        settings = {
            "NODENAME": f"rabbit-test-{self.port}@localhost",
            "NODE_IP_ADDRESS": "127.0.0.1",
            "NODE_PORT": self.port,
            "DIST_PORT": dist,
            "MNESIA_BASE": directory / "mnesia",
            "LOG_BASE": directory / "log",
            "CONFIG_FILE": directory / "rabbitmq.conf",
            "ENABLED_PLUGINS_FILE": directory / "enabled_plugins",
            "PID_FILE": directory / "rabbitmq.pid",
            "SERVER_ADDITIONAL_ERL_ARGS": '"-kernel inet_dist_use_interface {127,0,0,1}"',
        }
        env_file = directory / "rabbitmq-env.conf"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.log = (directory / "log" / "stdout.log").open("ab")
        self.env = {
            **os.environ,
            "HOME": str(directory / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    async def start(self) -> None:
        if self.epmd is None:
            self.epmd = await asyncio.create_subprocess_exec(
                "epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port), env=self.env
            )
        self.node = await asyncio.create_subprocess_exec(
            RABBITMQ_SERVER, env=self.env, stdout=self.log, stderr=self.log, start_new_session=True
        )
        await wait_until(self._answers, timeout=60, message="the private RabbitMQ did not start")

    async def _answers(self) -> bool:
        assert self.node is not None
        assert self.node.returncode is None, "the private node exited; see its log/stdout.log"
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.close()
            return True
        return False

    async def stop(self) -> None:
        """Graceful stop: the wrapper script traps TERM and stops the node."""
        if self.node is not None and self.node.returncode is None:
            self.node.terminate()
            await asyncio.wait_for(self.node.wait(), 60)
        self.node = None

    async def close(self) -> None:
        await self.stop()
        if self.epmd is not None and self.epmd.returncode is None:
            self.epmd.terminate()
            await self.epmd.wait()
        self.log.close()


@pytest.fixture
def rabbitmq_installed() -> None:
    if not Path(RABBITMQ_SERVER).exists():
        pytest.skip(f"{RABBITMQ_SERVER} is not installed (scripts/services install rabbitmq)")


@pytest.fixture
async def private_rabbit(
    rabbitmq_url: str, tmp_path: Path, rabbitmq_installed: None
) -> AsyncIterator[PrivateRabbit]:
    node = PrivateRabbit(tmp_path)
    try:
        await node.start()
        yield node
    finally:
        await node.close()


@pytest.mark.slow
async def test_a_broker_restart_keeps_events_and_brings_consumers_back(
    private_rabbit: PrivateRabbit, ns: str
) -> None:
    """Stop and start a real node: durable queues and persistent events survive, the live
    consumer resumes by itself, and a publish made while the node is down lands after it."""
    made: list[RabbitMQBroker] = []
    options: dict[str, Any] = {"reconnect_interval": 0.3, "publish_timeout": 60.0}
    broker = await make(private_rabbit.url, made, **options)
    parked_sub = subscription(f"{ns}.ev", f"{ns}-parked")
    await (await broker.subscribe(parked_sub)).close()  # a group that is offline meanwhile
    got: list[Any] = []
    router = Router()
    router.subscribe(f"{ns}.ev", group=f"{ns}-live")(collect(got))
    thing = event_class(f"{ns}.ev")
    async with bus(broker, router, service="svc") as running:
        await running.publish(thing(n=1))
        await wait_until(lambda: len(got) == 1)
        await private_rabbit.stop()
        during = asyncio.ensure_future(running.publish(thing(n=2)))
        await private_rabbit.start()
        await asyncio.wait_for(during, 60)
        await running.publish(thing(n=3))
        await wait_until(lambda: len(got) >= 3, timeout=30)
        consumer = await broker.subscribe(parked_sub)
        parked = []
        async for delivery in consumer:
            parked.append(delivery)
            await delivery.ack()  # prefetch is 2: acking lets the third one come
            if len(parked) == 3:
                break
        await consumer.close()
    assert sorted(e.json()["n"] for e, _ in got) == [1, 2, 3]
    assert sorted(d.envelope.json()["n"] for d in parked if d.envelope) == [1, 2, 3]
    await broker.close()
