"""Where a keyed Kafka record goes: the same partition as every Kafka client (no server needed).

eventbus hashes keys with its own murmur2 (aiokafka's is computed byte by byte); these hold it
to aiokafka's, which follows the Java client's, so a key lives on the same partition whoever
publishes it."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner, murmur2  # type: ignore[import-untyped]
from hypothesis import example, given
from hypothesis import strategies as st

from eventbus.brokers.kafka import partitioner
from eventbus.brokers.kafka.partitioner import KeyPartitioner


@given(st.binary(max_size=200))
@example(b"")
@example(b"21")
@example(b"abc")
@example(b"\xff\xff\xff\xff\xff\xff\xff")
def test_the_hash_is_kafkas_murmur2(data: bytes) -> None:
    assert partitioner.murmur2(data) == murmur2(data)


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=64))
def test_a_key_goes_where_aiokafkas_partitioner_puts_it(key: bytes, count: int) -> None:
    every = list(range(count))
    available = every[::2]  # which have a leader does not matter for a key
    expected = DefaultPartitioner()(key, every, available)
    assert KeyPartitioner()(key, every, available) == expected
    assert KeyPartitioner()(key, every, available) == expected  # again, remembered


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    place = KeyPartitioner()
    assert {place(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)} == {1, 3}
    assert {place(None, [0, 1], []) for _ in range(200)} == {0, 1}  # none available: any
