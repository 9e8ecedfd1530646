"""No password in any error, log record or ``repr`` of an adapter, on the real brokers: a
connection to a closed port, and a login the real server refuses. The URL helpers and
``from_url`` are tested in ``tests/test_redact.py``."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest

from eventbus import BrokerUnavailable, ConfigurationError, EventBus, EventBusError
from eventbus.brokers import from_url
from tests.test_redact import SECRET, messages_of

pytestmark = pytest.mark.anyio


async def assert_start_fails_without_the_secret(
    bus: EventBus, error: type[EventBusError], caplog: pytest.LogCaptureFixture
) -> EventBusError:
    """Start ``bus``, which must fail with ``error``; no message, cause or record shows it."""
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(error) as raised:
            await asyncio.wait_for(bus.start(), 30)
        await bus.stop()
    assert not any(SECRET in text for text in messages_of(raised.value))
    assert SECRET not in caplog.text
    assert not any(SECRET in str(r.__dict__) for r in caplog.records)
    assert SECRET not in repr(bus.broker)
    return raised.value


@pytest.mark.redis
async def test_redis_connect_errors_and_repr_never_show_the_password(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = EventBus(f"redis://app:{SECRET}@127.0.0.1:1/0")
    error = await assert_start_fails_without_the_secret(closed, BrokerUnavailable, caplog)
    assert "redis://app:***@127.0.0.1:1/0" in str(error)
    assert repr(closed.broker) == "RedisBroker('redis://app:***@127.0.0.1:1/0', prefix='eventbus:')"
    wrong = urlsplit(redis_url)._replace(netloc=f"nobody:{SECRET}@{urlsplit(redis_url).netloc}")
    refused = EventBus(wrong.geturl())  # the real server refuses the login
    await assert_start_fails_without_the_secret(refused, EventBusError, caplog)


@pytest.mark.rabbitmq
async def test_rabbitmq_connect_errors_and_repr_never_show_the_password(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = EventBus(f"amqp://app:{SECRET}@127.0.0.1:1/", reconnect_interval=0.1)
    error = await assert_start_fails_without_the_secret(closed, BrokerUnavailable, caplog)
    assert "amqp://app:***@127.0.0.1:1/" in str(error)
    assert repr(closed.broker) == "RabbitMQBroker('amqp://app:***@127.0.0.1:1/')"
    host = urlsplit(rabbitmq_url).netloc.rsplit("@", 1)[-1]
    refused = EventBus(f"amqp://guest:{SECRET}@{host}/")  # the real server refuses the login
    error = await assert_start_fails_without_the_secret(refused, ConfigurationError, caplog)
    assert "login refused" in str(error)


@pytest.mark.kafka
async def test_kafka_connect_errors_and_repr_never_show_the_password(
    kafka_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = EventBus(
        "kafka://127.0.0.1:1",
        sasl_mechanism="PLAIN",
        sasl_plain_username="app",
        sasl_plain_password=SECRET,
    )
    await assert_start_fails_without_the_secret(closed, BrokerUnavailable, caplog)
    assert repr(closed.broker) == (
        "KafkaBroker(['127.0.0.1:1'], sasl_mechanism='PLAIN', sasl_plain_password='***', "
        "sasl_plain_username='app')"
    )
    with pytest.raises(ConfigurationError) as raised:
        from_url(f"kafka://app:{SECRET}@{kafka_url.split('://', 1)[1]}")
    assert not any(SECRET in text for text in messages_of(raised.value))
