"""The records the Kafka adapter writes for an envelope, and reads back (no server needed).

The adapter reads the headers eventbus writes by a fast path of its own; these properties
hold it to the general binary-mode reader: the same envelope, the same refusals."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from eventbus.brokers.kafka.records import read_own, record_headers, record_of
from eventbus.envelope import Envelope, binary_headers, from_binary, to_binary
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
    assert read_own(dict(headers), value, key=key) == envelope


def _outcome(read: Any, headers: Any, body: bytes, key: bytes | None = None) -> Any:
    """What ``read`` makes of the record: its envelope, or the DecodeError's message."""
    try:
        return read(headers, body, key=key)
    except DecodeError as exc:
        return str(exc)


@given(envelopes(), st.none() | st.binary(max_size=8))
@example(Envelope(id="1", type="t", source="s", partitionkey="k"), b"\x80")  # key not UTF-8
def test_the_fast_reader_reads_what_the_general_one_does(
    envelope: Envelope, key: bytes | None
) -> None:
    headers, body = to_binary(envelope)
    as_bytes = {name: value.encode() for name, value in headers.items()}
    fast = _outcome(read_own, as_bytes, body, key)
    assert fast == _outcome(from_binary, as_bytes, body, key)
    assert isinstance(fast, Envelope) or key is not None  # only a key that is not UTF-8 fails


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
def test_the_fast_reader_accepts_and_refuses_exactly_what_the_general_one_does(
    headers: dict[str, Any], body: bytes
) -> None:
    assert _outcome(read_own, headers, body) == _outcome(from_binary, headers, body)
