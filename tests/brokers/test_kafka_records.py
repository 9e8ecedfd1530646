"""The records the Kafka adapter writes for an envelope, and reads back (no server needed).

The adapter reads the headers eventbus writes by a fast path of its own; these properties
hold it to the general binary-mode reader: the same envelope, the same refusals."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventbus.brokers.kafka.records import read_record, record_headers, record_of
from eventbus.envelope import Envelope, binary_headers, decode, from_binary, to_binary
from eventbus.errors import DecodeError
from tests.test_envelope import envelopes


@given(envelopes())
def test_record_headers_are_the_binary_mode_headers_as_utf8(envelope: Envelope) -> None:
    expected = [(name, value.encode()) for name, value in binary_headers(envelope)]
    assert record_headers(envelope) == expected
    assert record_headers(envelope) == expected  # again, with the repeated values remembered


@given(envelopes())
def test_a_record_reads_back_as_the_envelope_it_carries(envelope: Envelope) -> None:
    value, key, headers = record_of(envelope)
    assert decode(dict(headers), value, key=key) == envelope  # what read_record leaves over


def _outcome(read: Any, headers: Any, body: bytes, key: bytes | None = None) -> Any:
    """What ``read`` makes of the record: its envelope, or the DecodeError's message."""
    try:
        return read(headers, body, key=key)
    except DecodeError as exc:
        return str(exc)


_TIMED = Envelope(
    id="1", type="t", source="s", partitionkey="k", time=datetime(2026, 12, 2, tzinfo=timezone.utc)
)


@given(envelopes(), st.none() | st.binary(max_size=8))
@example(_TIMED, b"\x80")  # key not UTF-8
def test_the_fast_reader_reads_what_the_general_one_does(
    envelope: Envelope, key: bytes | None
) -> None:
    headers, body = to_binary(envelope)
    as_bytes = {name: value.encode() for name, value in headers.items()}
    general = _outcome(from_binary, as_bytes, body, key)
    fast = read_record(tuple(as_bytes.items()), body, key)
    if isinstance(general, Envelope) and envelope.time is not None and not envelope.extensions:
        assert fast == general
    else:  # no time, an extension, or refused: left to the general reader
        assert fast is None
    assert isinstance(general, Envelope) or key is not None  # only a key that is not UTF-8 fails


header_names = st.sampled_from(
    [
        *("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_dataversion"),
        *("ce_subject", "ce_partitionkey", "ce_tracestate", "content-type", "ce_x", "ce-id"),
    ]
)
header_values = st.sampled_from(
    [
        *(b"1.0", b"2.0", b"", b"id", b"5", b"-1", b"x", b"\xff", b"2026-12-01T10:00:00Z"),
        *(b"application/json", b"text/plain", "1.0", None),
    ]
)


@given(st.dictionaries(header_names, header_values, max_size=10), st.binary(max_size=8))
def test_the_fast_reader_accepts_only_what_the_general_one_reads_alike(
    headers: dict[str, Any], body: bytes
) -> None:
    fast = read_record(tuple(headers.items()), body, None)
    assert fast is None or fast == _outcome(from_binary, headers, body)


def _record_outcome(headers: list[tuple[str, Any]], body: bytes, key: bytes | None) -> Any:
    """What the general reader makes of the record (``dict()`` of its headers, as the
    consumer builds): its envelope, or the DecodeError's message."""
    return _outcome(from_binary, dict(headers), body, key)


@given(envelopes())
def test_the_list_reader_reads_every_record_eventbus_writes(envelope: Envelope) -> None:
    value, key, headers = record_of(envelope)
    read = read_record(tuple(headers), value, key)
    if envelope.time is not None and not envelope.extensions:
        assert read == envelope  # the consumer's fast path: no mapping, no general reader
    else:
        assert read is None or read == envelope


def _mutated(headers: list[tuple[str, Any]], data: st.DataObject) -> list[tuple[str, Any]]:
    """The headers with one change a foreign producer (or a retry copy) could make."""
    out = list(headers)
    at = data.draw(st.integers(0, len(out) - 1))
    change = data.draw(st.sampled_from(["drop", "repeat", "swap", "insert", "value", "rename"]))
    if change == "drop":
        del out[at]
    elif change == "repeat":
        out.insert(data.draw(st.integers(0, len(out))), out[at])
    elif change == "swap":
        other = data.draw(st.integers(0, len(out) - 1))
        out[at], out[other] = out[other], out[at]
    elif change == "insert":
        out.insert(data.draw(st.integers(0, len(out))), (data.draw(header_names), b"x"))
    elif change == "value":
        out[at] = (out[at][0], data.draw(header_values | st.just(b"not a time")))
    else:
        out[at] = (data.draw(header_names), out[at][1])
    return out


@settings(max_examples=300)
@given(envelopes(), st.none() | st.binary(max_size=8), st.data())
def test_the_list_reader_reads_only_what_the_general_one_reads_alike(
    envelope: Envelope, key: bytes | None, data: st.DataObject
) -> None:
    value, _, headers = record_of(envelope)
    headers = _mutated(headers, data)
    read = read_record(tuple(headers), value, key)
    assert read is None or read == _record_outcome(headers, value, key)


@pytest.mark.parametrize(
    ("at", "value", "key"),
    [
        (1, b"", None),  # an empty id
        (2, b"", None),  # an empty source
        (3, b"\xff", None),  # a type that is not UTF-8
        (4, b"\xff", None),  # a partition key that is not UTF-8
        (5, b"yesterday", None),  # a time that is not RFC 3339
        (6, b"one", None),  # a data version that is not a number
        (None, None, b"\x80"),  # a record key that is not UTF-8, beside a partitionkey
    ],
)
def test_the_list_reader_leaves_what_the_general_one_refuses_to_it(
    at: int | None, value: bytes | None, key: bytes | None
) -> None:
    body, _, headers = record_of(_TIMED.replace(dataversion=2))
    assert [name for name, _ in headers][4:7] == ["ce_partitionkey", "ce_time", "ce_dataversion"]
    if at is not None:
        headers[at] = (headers[at][0], value)
    assert isinstance(_record_outcome(headers, body, key), str)  # refused, with a reason
    assert read_record(tuple(headers), body, key) is None
