"""The records the Kafka adapter writes for an envelope (no server needed)."""

from __future__ import annotations

from hypothesis import given

from eventbus.brokers.kafka import _headers, _record
from eventbus.envelope import Envelope, binary_headers, from_own_binary
from tests.test_envelope import envelopes


@given(envelopes())
def test_record_headers_are_the_binary_mode_headers_as_utf8(envelope: Envelope) -> None:
    expected = [(name, value.encode()) for name, value in binary_headers(envelope)]
    assert _headers(envelope) == expected
    assert _headers(envelope) == expected  # again, with the repeated values remembered


@given(envelopes())
def test_a_record_reads_back_as_the_envelope_it_carries(envelope: Envelope) -> None:
    value, key, headers = _record(envelope)
    assert from_own_binary(dict(headers), value, key=key) == envelope
