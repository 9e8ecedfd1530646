"""Decoding is total on every adapter: any bytes and any headers a driver can hand over give an
envelope or a ``DecodeError`` on that one delivery, never another exception; and what an
adapter keeps of a message can always be sent on again (requeue, retry, dead letter)."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace
from typing import Any

import pamqp.encode
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventbus.brokers.kafka import KafkaDelivery, _Partition
from eventbus.brokers.memory import MemoryBroker, MemoryConsumer, MemoryDelivery
from eventbus.brokers.memory.queues import Message
from eventbus.brokers.rabbitmq import RabbitMQDelivery
from eventbus.brokers.redis import RedisDelivery
from eventbus.envelope import STRUCTURED_CONTENT_TYPE, Envelope, decode
from eventbus.errors import DecodeError

DEEP = b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":' + b"[" * 50_000
SURROGATE = b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":"\\ud800"}'
HUGE_TIME = json.dumps(
    {"specversion": "1.0", "id": "x", "source": "s", "type": "t", "time": 1e20}
).encode()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.binary(max_size=20).map(bytearray),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
    max_leaves=6,
)  # fmt: skip
ce_names = st.sampled_from(
    ["ce_id", "ce-id", "ce_type", "ce-type", "ce_source", "ce-specversion", "ce_time",
     "ce-dataversion", "ce_partitionkey", "content-type", "cloudEvents:id", "eventbus-attempt"]
)  # fmt: skip
header_maps = st.dictionaries(ce_names | st.text(max_size=12), values, max_size=8)
bodies = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: json.dumps(v, default=repr).encode()),
    st.sampled_from([DEEP, SURROGATE, HUGE_TIME]),
)


def _outcome(envelope: Envelope | None, error: DecodeError | None) -> None:
    assert (envelope is None) != (error is None)


@settings(max_examples=400, deadline=None)
@given(header_maps, bodies, st.one_of(st.none(), st.text(), st.binary()))
@example({"content-type": STRUCTURED_CONTENT_TYPE}, DEEP, None)
@example({"content-type": STRUCTURED_CONTENT_TYPE}, SURROGATE, None)
@example({"content-type": 5}, HUGE_TIME, b"\xff")
def test_decode_returns_an_envelope_or_raises_decode_error(
    headers: dict[str, Any], body: bytes, key: Any
) -> None:
    with contextlib.suppress(DecodeError):
        decode(headers, body, key=key)


@settings(max_examples=200, deadline=None)
@given(header_maps, bodies, st.one_of(st.none(), st.text(max_size=8)))
def test_the_memory_adapter_decodes_anything(
    headers: dict[str, Any], body: bytes, key: str | None
) -> None:
    broker = MemoryBroker()
    consumer = MemoryConsumer(broker, broker._queue_for("g", "t", False))
    delivery = MemoryDelivery(consumer, 0, Message("t", None, (headers, body), key))
    _outcome(delivery.envelope, delivery.decode_error)
    assert delivery.body == body


redis_fields = st.dictionaries(
    st.sampled_from([b"data", b"content-type", b"partitionkey", b"eventbus-attempt"])
    | st.binary(max_size=12),
    st.binary(max_size=60) | bodies,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(redis_fields, st.integers(min_value=0, max_value=10**6))
@example({b"data": DEEP, b"content-type": STRUCTURED_CONTENT_TYPE.encode()}, 1)
@example({b"data": b"{}", b"eventbus-attempt": "²".encode()}, 1)
def test_the_redis_adapter_decodes_any_entry(fields: dict[bytes, bytes], times: int) -> None:
    consumer: Any = SimpleNamespace(subscription=SimpleNamespace(topic="t"))
    delivery = RedisDelivery(consumer, "s", "1-0", fields, times)
    _outcome(delivery.envelope, delivery.decode_error)
    assert delivery.attempt >= 1
    carried = delivery._carried(delivery.attempt + 1)
    assert all(isinstance(part, (bytes, str)) for part in carried)  # what XADD takes


kafka_headers = st.lists(
    st.tuples(ce_names | st.text(max_size=12), st.none() | st.binary(max_size=40)), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(kafka_headers, st.none() | bodies, st.none() | st.binary(max_size=12))
@example([("eventbus-attempt", "²".encode()), ("eventbus-due", b"9" * 40)], b"{}", None)
def test_the_kafka_adapter_decodes_any_record(
    headers: list[tuple[str, bytes | None]], value: bytes | None, key: bytes | None
) -> None:
    record = SimpleNamespace(offset=0, headers=headers, value=value, key=key, topic="t")
    delivery = KafkaDelivery(SimpleNamespace(), "tp", _Partition(), record)  # type: ignore[arg-type]
    _outcome(delivery.envelope, delivery.decode_error)
    assert delivery.attempt >= 1


amqp_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
        st.text(max_size=20), st.binary(max_size=20), st.binary(max_size=20).map(bytearray),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)  # fmt: skip
"""What pamqp hands over for a header table value: ``bytes`` is a long string not in UTF-8."""


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(ce_names | st.text(max_size=12), amqp_values, max_size=8),
    bodies,
    st.none() | st.text(max_size=30),
    st.booleans(),
)
@example({"ce-type": b"\xff\xfe", "ce-id": "1"}, b"{}", None, False)
@example({"ce-type": bytearray(b"t"), "x-delivery-count": -5}, b"{}", None, True)
def test_the_rabbitmq_adapter_decodes_any_message_and_can_send_it_on(
    headers: dict[str, Any], body: bytes, content_type: str | None, redelivered: bool
) -> None:
    message = SimpleNamespace(
        headers=headers,
        body=body,
        content_type=content_type,
        redelivered=redelivered,
        routing_key="t",
    )
    delivery = RabbitMQDelivery(SimpleNamespace(), message)  # type: ignore[arg-type]
    _outcome(delivery.envelope, delivery.decode_error)
    assert delivery.attempt >= 1
    table = {k: v for k, v in delivery.headers.items() if k != "content-type"}
    pamqp.encode.field_table(table)  # a requeue or dead letter can republish these headers
