"""The Redis adapter packs commands with hiredis: the same bytes, the same errors, only faster."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from eventbus.brokers.redis.packing import pack_with_hiredis

ARGUMENT = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.binary().map(lambda data: memoryview(data)),
)


def _packed_client(url: str = "redis://127.0.0.1:1/0", **options: Any) -> aioredis.Redis:
    client = aioredis.Redis.from_url(url, **options)
    assert pack_with_hiredis(client)
    return client


def _connection(client: aioredis.Redis) -> Any:
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


@given(st.sampled_from(["XADD", "XACK", b"EVALSHA", "SET"]), st.lists(ARGUMENT, max_size=12))
def test_commands_are_the_bytes_redis_py_writes(name: str | bytes, args: list[Any]) -> None:
    ours = _connection(_packed_client())
    stock = Connection()
    assert b"".join(ours.pack_command(name, *args)) == b"".join(stock.pack_command(name, *args))


def test_a_pipeline_of_commands_is_the_same_bytes() -> None:
    commands: list[tuple[Any, ...]] = [
        ("XADD", "s", "*", b"data", b'{"a":1}'),
        ("XACK", "s", "g", "1-0", "2-0"),
    ]
    ours = _connection(_packed_client())
    assert b"".join(ours.pack_commands(commands)) == b"".join(Connection().pack_commands(commands))


@pytest.mark.parametrize("bad", [True, None, [1], object()])
def test_what_redis_py_refuses_is_refused_the_same_way(bad: Any) -> None:
    ours = _connection(_packed_client())
    with pytest.raises(DataError) as ours_error:
        ours.pack_command("SET", "key", bad)
    with pytest.raises(DataError) as stock_error:
        Connection().pack_command("SET", "key", bad)
    assert str(ours_error.value) == str(stock_error.value)


def test_command_names_with_a_space_are_split_as_redis_py_splits_them() -> None:
    ours = _connection(_packed_client())
    stock = Connection()
    for name in ("CLIENT SETNAME", b"CONFIG GET"):
        assert ours.pack_command(name, "x") == stock.pack_command(name, "x")


def test_the_connection_class_of_the_url_is_kept() -> None:
    client = _packed_client("unix:///tmp/eventbus-no-such.sock")
    assert issubclass(client.connection_pool.connection_class, UnixDomainSocketConnection)
    assert pack_with_hiredis(client)  # twice: still one subclass, not one per call
    assert client.connection_pool.connection_class.__mro__.count(UnixDomainSocketConnection) == 1


def test_a_client_that_does_not_write_strict_utf8_is_left_alone() -> None:
    cases: list[dict[str, Any]] = [{"encoding": "latin-1"}, {"encoding_errors": "replace"}]
    for options in cases:
        client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", **options)
        assert not pack_with_hiredis(client)
        assert client.connection_pool.connection_class is Connection
