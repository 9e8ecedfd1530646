"""Shared test settings.

Async tests run on asyncio through anyio's pytest plugin. Tests that need a real server take
one of the ``*_url`` fixtures below: the URL comes from ``EVENTBUS_TEST_<SERVER>_URL`` (what
``scripts/services urls`` prints) or the loopback default. When the server does not answer, the
test fails under CI (``CI=true``: the test command starts every server, so a missing one is a
bug) and is skipped elsewhere, with the command that starts it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "postgres": "postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/eventbus",
    "kafka": "kafka://127.0.0.1:9092",
}
DEFAULT_PORTS = {"redis": 6379, "rabbitmq": 5672, "postgres": 5432, "kafka": 9092}


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh Redis key prefix for this test, its keys deleted afterwards."""
    from tests.redissupport import fresh_prefix  # redis is only imported by tests that use it

    async for name in fresh_prefix(redis_url):
        yield name


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def server_url(kind: str) -> str:
    """The URL of the ``kind`` test server, failing (CI) or skipping when it does not answer."""
    url = os.environ.get(f"EVENTBUS_TEST_{kind.upper()}_URL", DEFAULT_URLS[kind])
    first_host = urlsplit(url).netloc.rsplit("@", 1)[-1].split(",")[0]
    host, _, port = first_host.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or DEFAULT_PORTS[kind])), 2):
            pass
    except OSError as exc:
        message = (
            f"no {kind} server at {url} ({exc}); start one with `scripts/services start {kind}` "
            f"or point EVENTBUS_TEST_{kind.upper()}_URL at yours"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return server_url("redis")


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return server_url("rabbitmq")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return server_url("postgres")


@pytest.fixture(scope="session")
def kafka_url() -> str:
    return server_url("kafka")
