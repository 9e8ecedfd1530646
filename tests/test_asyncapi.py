"""The AsyncAPI export: valid against the official 3.0.0 JSON Schema, every ``$ref`` resolving,
and saying what the adapters really put on the wire (header names, channels, payloads)."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import pytest
import redis.asyncio as aioredis
import yaml
from pydantic import AfterValidator, BaseModel, Field

from eventbus import Envelope, Event, EventBus, Router
from eventbus.asyncapi import asyncapi_document, to_json, to_yaml
from eventbus.brokers.kafka.topology import dlq_topic
from eventbus.envelope import to_binary, to_structured
from eventbus.errors import ConfigurationError, PermanentError, RetryLater
from eventbus.testing import wait_until
from tests.shop.orders import Created
from tests.shop.refunds import Created as RefundCreated

ROOT = Path(__file__).parent.parent
SCHEMA = ROOT / ".cache/npm/node_modules/@asyncapi/specs/schemas/3.0.0.json"
URLS = {
    "memory": "memory://",
    "kafka": "kafka://k1.example:9092,k2.example:9093",
    "rabbitmq": "amqp://shop:s3cr3t-pw@rabbit.example:5672/shop",
    "redis": "redis://:r3d1s-pw@redis.example:6380/2",
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    """The official schema: from ``EVENTBUS_ASYNCAPI_SCHEMA`` or what scripts/bootstrap installs
    (npm ``@asyncapi/specs``); missing, the test fails under CI and is skipped elsewhere."""
    path = Path(os.environ.get("EVENTBUS_ASYNCAPI_SCHEMA", SCHEMA))
    if not path.is_file():
        message = f"no AsyncAPI 3.0.0 JSON Schema at {path}: run scripts/bootstrap (needs npm)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    city: str


class Line(BaseModel):
    sku: Annotated[str, AfterValidator(str.upper)]
    quantity: int = Field(ge=1)
    color: Color | None = None


class OrderPlaced(Event):
    """An order was placed and paid for."""

    event_version = 2
    order_id: str
    lines: list[Line]
    ship_to: Address | None = None
    placed_at: datetime


def make_bus(url: str) -> EventBus:
    bus = EventBus(url, service="shop", publishes=[OrderPlaced, Created])
    refunds = Router(publishes=[RefundCreated])

    @bus.subscribe(OrderPlaced)
    async def on_placed(event: OrderPlaced) -> None: ...

    @refunds.subscribe(RefundCreated, group="ledger")
    async def on_refund(event: RefundCreated) -> None: ...

    @refunds.subscribe("refunds.#")
    async def audit(envelope: Envelope) -> None: ...

    bus.include_router(refunds)
    return bus


def resolve(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref} does not resolve at {part!r}"
        assert part in node, f"{ref} does not resolve at {part!r}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


@pytest.mark.parametrize("broker", sorted(URLS))
def test_every_export_is_valid_asyncapi_3_with_resolving_refs(
    broker: str, validator: jsonschema.Draft7Validator
) -> None:
    document = asyncapi_document(make_bus(URLS[broker]), title="Shop", version="2.1.0")
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    found = list(refs(document))
    assert found, "a document with nothing referenced checks nothing"
    for ref in found:
        resolve(document, ref)
    for operation in document["operations"].values():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:  # a subset of its channel's messages
            assert message["$ref"].startswith(channel_ref + "/messages/")
    assert document["info"] == {
        "title": "Shop",
        "version": "2.1.0",
        "description": "The events the shop service receives and sends.",
    }


def test_the_validator_rejects_what_is_not_asyncapi_3(
    validator: jsonschema.Draft7Validator,
) -> None:
    document = asyncapi_document(make_bus("memory://"))
    broken = json.loads(to_json(document))
    next(iter(broken["operations"].values()))["action"] = "publish"  # the 2.x verb
    assert list(validator.iter_errors(broken))


def test_receive_per_subscription_send_per_declared_event_one_channel_per_destination() -> None:
    document = asyncapi_document(make_bus("memory://"))
    operations = document["operations"]
    actions = sorted((op["action"], op["channel"]["$ref"]) for op in operations.values())
    assert actions == [
        ("receive", "#/channels/OrderPlaced"),
        ("receive", "#/channels/refunds._"),
        ("receive", "#/channels/refunds.created"),
        ("send", "#/channels/OrderPlaced"),
        ("send", "#/channels/orders.created"),
        ("send", "#/channels/refunds.created"),
    ]
    placed = document["channels"]["OrderPlaced"]
    assert placed["address"] == "OrderPlaced"
    assert list(placed["messages"]) == ["OrderPlaced"]  # received and sent: one message
    groups = {op.get("x-eventbus-group") for op in operations.values() if op["action"] == "receive"}
    assert groups == {"shop.on_placed", "ledger", "shop.audit"}
    pattern = document["channels"]["refunds._"]
    assert pattern["address"] is None
    assert pattern["x-eventbus-pattern"] == "refunds.#"
    assert document["components"]["messages"]["CloudEvent"]["payload"] == {}


def test_nested_models_enums_optional_fields_and_validators_become_component_schemas() -> None:
    document = asyncapi_document(make_bus("memory://"))
    schemas = document["components"]["schemas"]
    message = document["components"]["messages"]["OrderPlaced"]
    assert message["payload"] == {"$ref": "#/components/schemas/OrderPlaced"}
    assert message["name"] == "OrderPlaced"
    assert message["summary"] == "An order was placed and paid for."
    assert message["x-eventbus-version"] == 2
    placed = schemas["OrderPlaced"]
    assert set(placed["required"]) == {"order_id", "lines", "placed_at"}
    assert placed["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/Line"}
    assert {"$ref": "#/components/schemas/Address"} in placed["properties"]["ship_to"]["anyOf"]
    assert schemas["Color"]["enum"] == ["red", "blue"]
    assert schemas["Line"]["properties"]["quantity"]["minimum"] == 1
    assert "$defs" not in json.dumps(document)
    # The payload schema accepts what a publisher really writes, resolved in the document.
    event = OrderPlaced(
        order_id="o-1",
        lines=[Line(sku="ab", quantity=2, color=Color.RED)],
        placed_at=datetime(2026, 1, 2, 3, 4, 5),
    )
    payload = json.loads(event.model_dump_json())
    wrapped = {**document, "$ref": "#/components/schemas/OrderPlaced"}
    jsonschema.Draft7Validator(wrapped).validate(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(wrapped).validate({**payload, "lines": [{"sku": "x"}]})


def test_two_models_of_one_name_in_different_modules_stay_two() -> None:
    document = asyncapi_document(make_bus("memory://"))
    schemas = document["components"]["schemas"]
    orders, refunds = (
        schemas["tests__shop__orders__Created"],
        schemas["tests__shop__refunds__Created"],
    )
    assert set(orders["properties"]) == {"order_id"}
    assert set(refunds["properties"]) == {"refund_id", "amount"}
    messages = document["components"]["messages"]
    assert messages["tests__shop__orders__Created"]["name"] == "orders.created"
    assert messages["tests__shop__refunds__Created"]["name"] == "refunds.created"


async def _published(bus: EventBus) -> Envelope:
    async with bus:
        return await bus.publish(
            OrderPlaced(order_id="o-1", lines=[], placed_at=datetime(2026, 1, 1)),
            key="o-1",
            headers={"tenant": "acme"},
        )


@pytest.mark.anyio
@pytest.mark.parametrize(("broker", "prefix"), [("kafka", "ce_"), ("rabbitmq", "ce-")])
async def test_the_headers_schema_names_the_headers_the_adapter_writes(
    broker: str, prefix: str
) -> None:
    document = asyncapi_document(make_bus(URLS[broker]))
    headers = document["components"]["messages"]["OrderPlaced"]["headers"]
    envelope = await _published(EventBus("memory://", service="shop"))
    wire, _ = to_binary(envelope, prefix=prefix)  # what the adapter sends
    if broker == "rabbitmq":  # the content type travels as the AMQP property
        wire.pop("content-type")
        assert "content-type" not in headers["properties"]
    jsonschema.Draft7Validator(headers).validate(wire)
    assert headers["properties"][f"{prefix}type"]["const"] == "OrderPlaced"
    assert headers["properties"][f"{prefix}dataversion"]["const"] == "2"
    assert f"{prefix}id" in headers["required"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(headers).validate({**wire, f"{prefix}type": "Other"})


@pytest.mark.anyio
async def test_on_redis_the_payload_is_the_structured_envelope() -> None:
    document = asyncapi_document(make_bus(URLS["redis"]))
    message = document["components"]["messages"]["OrderPlaced"]
    assert message["contentType"] == "application/cloudevents+json"
    assert "headers" not in message
    assert message["payload"]["properties"]["data"] == {"$ref": "#/components/schemas/OrderPlaced"}
    envelope = await _published(EventBus("memory://", service="shop"))
    entry = json.loads(to_structured(envelope))  # the entry's data field
    wrapped = {**document, **message["payload"]}
    jsonschema.Draft7Validator(wrapped).validate(entry)


def test_servers_come_from_the_broker_url_without_credentials() -> None:
    for broker in ("rabbitmq", "redis"):
        text = to_json(asyncapi_document(make_bus(URLS[broker])))
        assert "s3cr3t-pw" not in text
        assert "r3d1s-pw" not in text
        assert "shop:" not in text.replace('"shop:', "")  # no user information either
    rabbit = asyncapi_document(make_bus(URLS["rabbitmq"]))["servers"]
    assert rabbit == {
        "amqp": {"host": "rabbit.example:5672", "protocol": "amqp", "pathname": "/shop"}
    }
    kafka = asyncapi_document(make_bus(URLS["kafka"]))["servers"]
    assert kafka == {
        "kafka-1": {"host": "k1.example:9092", "protocol": "kafka"},
        "kafka-2": {"host": "k2.example:9093", "protocol": "kafka"},
    }
    assert "servers" not in asyncapi_document(make_bus("memory://"))
    given = asyncapi_document(
        make_bus("memory://"), servers={"production": "amqps://u:topsecret@mq.example:5671/prod"}
    )
    assert given["servers"] == {
        "production": {"host": "mq.example:5671", "protocol": "amqps", "pathname": "/prod"}
    }
    assert "topsecret" not in to_json(given)
    with pytest.raises(ConfigurationError, match="servers="):
        asyncapi_document(make_bus("memory://"), servers={"bad name": "kafka://h:1"})


def _internal(document: dict[str, Any], role: str) -> dict[str, str]:
    return {
        cid: channel["address"]
        for cid, channel in document["channels"].items()
        if channel.get("x-eventbus-role") == role
    }


def test_retry_and_dead_letter_channels_are_the_adapters_own_names() -> None:
    kafka = asyncapi_document(make_bus(URLS["kafka"]))
    assert _internal(kafka, "dead-letter")["ledger.dead-letter"] == "__eventbus.dlq.ledger"
    assert dlq_topic("ledger") == "__eventbus.dlq.ledger"
    retries = set(_internal(kafka, "retry").values())
    assert "__eventbus.retry.ledger.refunds-created.0ms" in retries
    assert "__eventbus.retry.shop-on_placed.OrderPlaced.60000ms" in retries
    redis = asyncapi_document(make_bus(URLS["redis"]))
    assert _internal(redis, "retry")["ledger.retry"] == "eventbus:refunds.created~retry~ledger"
    assert _internal(redis, "dead-letter")["ledger.dead-letter"] == "eventbus:~dlq~ledger"
    rabbit = asyncapi_document(make_bus(URLS["rabbitmq"]))
    assert _internal(rabbit, "dead-letter")["ledger.dead-letter"] == "ledger.refunds.created.dlq"
    retry = rabbit["channels"]["ledger.retry"]
    assert retry["address"] == "ledger.refunds.created.wait.{delayMs}"
    assert set(retry["parameters"]) == {"delayMs"}
    operations = rabbit["operations"]
    dead = [op for op in operations.values() if op["channel"]["$ref"].endswith("dead-letter")]
    assert {op["action"] for op in dead} == {"send"}
    assert _internal(asyncapi_document(make_bus("memory://")), "retry") == {}
    group_ids = {
        op["x-eventbus-group"]: op["bindings"]["kafka"]["groupId"]["enum"]
        for op in kafka["operations"].values()
        if "x-eventbus-group" in op  # the subscriptions' own receive operations
    }
    assert group_ids == {  # a pattern subscription's Kafka group is named for the pattern too
        "shop.on_placed": ["shop.on_placed"],
        "ledger": ["ledger"],
        "shop.audit": ["shop.audit:refunds.#"],
    }
    bare = asyncapi_document(make_bus(URLS["kafka"]), internal_channels=False)
    assert _internal(bare, "retry") == _internal(bare, "dead-letter") == {}


def test_yaml_and_json_say_the_same() -> None:
    document = asyncapi_document(make_bus(URLS["kafka"]))
    assert yaml.safe_load(to_yaml(document)) == json.loads(to_json(document))


def test_a_model_without_a_json_schema_is_named() -> None:
    class Opaque(Event):
        kind: type = int

    bus = EventBus("memory://", publishes=[Opaque])
    with pytest.raises(
        ConfigurationError, match=r"(?s)cannot describe .*Opaque as JSON Schema.*WithJsonSchema"
    ):
        asyncapi_document(bus)


def test_publishes_takes_event_classes_only() -> None:
    with pytest.raises(ConfigurationError, match="publishes= takes Event subclasses"):
        Router(publishes=[BaseModel])  # type: ignore[list-item]
    router = Router()
    router.declare_publishes(OrderPlaced, OrderPlaced)
    assert router.publishes == [OrderPlaced]


@pytest.mark.anyio
@pytest.mark.redis
async def test_on_redis_the_documented_retry_and_dead_letter_streams_are_where_they_go(
    redis_url: str, prefix: str
) -> None:
    bus = EventBus(redis_url, service="shop", prefix=prefix, middleware=())
    seen: list[str] = []

    @bus.subscribe(RefundCreated, group="ledger")
    async def on_refund(event: RefundCreated) -> None:
        seen.append(event.refund_id)
        if event.refund_id == "dead":
            raise PermanentError("refused")
        if seen.count("late") == 1:
            raise RetryLater(0.01)

    document = asyncapi_document(bus)
    retry = _internal(document, "retry")["ledger.retry"]
    dead = _internal(document, "dead-letter")["ledger.dead-letter"]
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with bus:
            await bus.publish(RefundCreated(refund_id="late", amount=1))
            await wait_until(lambda: seen == ["late", "late"])
            groups = await client.xinfo_groups(retry)  # the group reads its redeliveries there
            assert [(g["name"], g["entries-read"]) for g in groups] == [(b"ledger", 1)]
            await bus.publish(RefundCreated(refund_id="dead", amount=1))

            async def dead_lettered() -> bool:
                return bool(await client.xlen(dead) == 1)

            await wait_until(dead_lettered)
    finally:
        await client.aclose()
