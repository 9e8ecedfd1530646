"""The envelope and its wire codecs: round trips, interop with other producers, bad input."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus.envelope import (
    STRUCTURED_CONTENT_TYPE,
    Envelope,
    decode,
    from_binary,
    from_structured,
    new_envelope,
    time_text,
    to_binary,
    to_structured,
    validate_extension_name,
)
from eventbus.errors import DecodeError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
ext_names = words.filter(
    lambda n: (
        n not in {"id", "source", "type", "subject", "dataschema", "partitionkey", "time"}
        and n not in {"correlationid", "causationid", "traceparent", "tracestate", "specversion"}
        and n not in {"datacontenttype", "dataversion", "data"}
    )
)
printable = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)
times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)
)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    payload = draw(json_values)
    return Envelope(
        id=draw(printable),
        type=draw(words),
        source=draw(printable),
        data=json.dumps(payload).encode() if draw(st.booleans()) else b"",
        time=draw(st.none() | times),
        subject=draw(st.none() | printable),
        partitionkey=draw(st.none() | printable),
        correlationid=draw(st.none() | printable),
        causationid=draw(st.none() | printable),
        dataversion=draw(st.none() | st.integers(min_value=1, max_value=10**6)),
        traceparent=draw(st.none() | printable),
        extensions=draw(st.dictionaries(ext_names, printable, max_size=4)),
    )


def _same_payload(a: Envelope, b: Envelope) -> None:
    assert (json.loads(a.data) if a.data else None) == (json.loads(b.data) if b.data else None)
    assert a.replace(data=b"") == b.replace(data=b"")


@given(envelopes())
def test_binary_mode_round_trips_exactly(envelope: Envelope) -> None:
    for prefix in ("ce_", "ce-"):
        headers, body = to_binary(envelope, prefix)
        assert from_binary(headers, body) == envelope
        assert decode(headers, body) == envelope


@given(envelopes())
def test_binary_mode_survives_bytes_header_values(envelope: Envelope) -> None:
    headers, body = to_binary(envelope)
    as_bytes = {name: value.encode() for name, value in headers.items()}
    assert from_binary(as_bytes, body) == envelope


@given(envelopes())
def test_structured_mode_round_trips(envelope: Envelope) -> None:
    _same_payload(from_structured(to_structured(envelope)), envelope)
    headers = {"content-type": STRUCTURED_CONTENT_TYPE}
    _same_payload(decode(headers, to_structured(envelope)), envelope)


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?(Z|[+-]\d\d:\d\d)$")
offsets = st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))
any_zone = st.none() | st.just(timezone.utc) | offsets.map(timezone)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)), any_zone)
def test_any_time_is_written_in_rfc_3339_and_read_back_as_the_same_instant(
    naive: datetime, zone: timezone | None
) -> None:
    """A naive time is UTC; an offset of seconds (which RFC 3339 cannot write) goes to UTC."""
    envelope = Envelope(id="1", type="t", source="s", time=naive.replace(tzinfo=zone))
    instant = naive.replace(tzinfo=zone or timezone.utc)
    headers, body = to_binary(envelope)
    assert RFC3339.match(headers["ce_time"]), headers["ce_time"]
    for read in (from_binary(headers, body), from_structured(to_structured(envelope))):
        assert read.time is not None
        assert read.time - instant == timedelta(0)


@given(st.binary(max_size=200))
def test_non_json_payloads_use_data_base64(payload: bytes) -> None:
    envelope = Envelope(id="1", type="t", source="s", data=payload, datacontenttype="image/png")
    document = json.loads(to_structured(envelope))
    assert ("data_base64" in document) is bool(payload)
    assert from_structured(to_structured(envelope)) == envelope


@given(st.binary(max_size=64), st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
def test_arbitrary_bytes_either_decode_or_raise_decode_error(
    body: bytes, headers: dict[str, str]
) -> None:
    with contextlib.suppress(DecodeError):
        decode(headers, body)


def test_key_becomes_partitionkey_when_the_attribute_is_absent() -> None:
    headers = {"ce_id": "1", "ce_type": "t", "ce_source": "s", "ce_specversion": "1.0"}
    assert from_binary(headers, b"{}", key=b"user-1").partitionkey == "user-1"
    headers["ce_partitionkey"] = "explicit"
    assert from_binary(headers, b"{}", key=b"user-1").partitionkey == "explicit"


@pytest.mark.parametrize("prefix", ["ce_", "ce-", "cloudEvents_", "cloudEvents:"])
def test_every_documented_header_prefix_is_read(prefix: str) -> None:
    headers = {
        f"{prefix}id": "a1",
        f"{prefix}type": "OrderPlaced",
        f"{prefix}source": "/orders",
        f"{prefix}specversion": "1.0",
        f"{prefix}time": "2026-11-23T10:00:00Z",
        "content_type": "application/json",
    }
    envelope = decode(headers, b'{"order_id": "o1"}')
    assert (envelope.id, envelope.type, envelope.source) == ("a1", "OrderPlaced", "/orders")
    assert envelope.time == datetime(2026, 11, 23, 10, tzinfo=timezone.utc)
    assert envelope.json() == {"order_id": "o1"}


def test_structured_json_body_without_content_type_is_read() -> None:
    """Some producers (older SDKs, Dapr) send the structured JSON with a plain content type."""
    body = json.dumps(
        {"specversion": "1.0", "id": "9", "type": "t", "source": "s", "data": {"a": 1}}
    ).encode()
    assert decode({"content-type": "application/json"}, body).json() == {"a": 1}


@pytest.mark.parametrize(
    ("time_value", "expected"),
    [
        ("2026-01-01T00:00:00+00:00", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (1767225600000, datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=timezone.utc)),
    ],
)
def test_time_arrives_in_any_documented_form(time_value: Any, expected: datetime) -> None:
    headers = {"ce-id": "1", "ce-type": "t", "ce-source": "s", "ce-specversion": "1.0"}
    parsed = decode({**headers, "ce-time": time_value}, b"").time
    assert parsed is not None
    assert parsed - expected == timedelta(0)


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({}, b"\x00\xff", "not a CloudEvent"),
        ({"ce_id": "1", "ce_type": "t", "ce_specversion": "1.0"}, b"", "source"),
        ({"ce_id": "1", "ce_type": "t", "ce_source": "s", "ce_specversion": "0.3"}, b"", "0.3"),
        ({"content-type": STRUCTURED_CONTENT_TYPE}, b"{not json", "not valid JSON"),
        ({"content-type": STRUCTURED_CONTENT_TYPE}, b"[1]", "JSON object"),
        (
            {
                "ce_id": "1",
                "ce_type": "t",
                "ce_source": "s",
                "ce_specversion": "1.0",
                "ce_time": "x",
            },
            b"",
            "RFC 3339",
        ),
        (
            {"ce_id": b"\xff", "ce_type": "t", "ce_source": "s", "ce_specversion": "1.0"},
            b"",
            "UTF-8",
        ),
    ],
)
def test_bad_messages_raise_decode_error_saying_why(
    headers: dict[str, Any], body: bytes, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(headers, body)


def test_envelope_is_immutable() -> None:
    envelope = Envelope(id="1", type="t", source="s", extensions={"tenant": "a"})
    with pytest.raises(AttributeError):
        envelope.id = "2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        envelope.extensions["tenant"] = "b"  # type: ignore[index]
    assert envelope.replace(id="2").id == "2"


@given(envelopes())
def test_the_fast_constructor_makes_the_same_immutable_envelope(envelope: Envelope) -> None:
    fields = {f.name: getattr(envelope, f.name) for f in dataclasses.fields(Envelope) if f.init}
    del fields["specversion"]
    fast = new_envelope(**fields)
    assert type(fast) is Envelope
    assert fast == envelope
    assert hash(fast) == hash(envelope)
    assert repr(fast) == repr(envelope)
    assert to_binary(fast) == to_binary(envelope)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.id = "other"  # type: ignore[misc]
    assert fast.replace(subject="s").subject == "s"


@pytest.mark.parametrize("name", ["x-tenant", "Tenant", "", "type", "a" * 65])
def test_extension_names_follow_cloudevents_rules(name: str) -> None:
    with pytest.raises(ValueError, match="lowercase letters or digits"):
        validate_extension_name(name)
    assert validate_extension_name("tenant2") == "tenant2"


@pytest.mark.parametrize(
    "data",
    [
        "[" * 300 + "]" * 300,  # deeper than the fast parser goes: the standard library reads it
        '{"price":1e400,"ratio":NaN,"big":123456789012345678901234567890}',
        '{"name":"Zoë \\ud83d\\ude00"}',  # an escaped surrogate pair is one character
    ],
)
def test_structured_documents_the_standard_json_reads_are_read(data: str) -> None:
    """The structured codec is pydantic-core's JSON with the standard library behind it:
    every document ``json`` accepts is accepted, with the same data."""
    document = '{"specversion":"1.0","id":"1","source":"s","type":"t","data":' + data + "}"
    envelope = from_structured(document.encode())
    assert json.dumps(json.loads(envelope.data)) == json.dumps(json.loads(data))  # NaN != NaN
    assert from_structured(to_structured(envelope)) == envelope


def test_a_lone_surrogate_is_refused_wherever_it_is() -> None:
    for document in (
        '{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"\\ud800"}',
        '{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":"\\ud800"}}',
    ):
        with pytest.raises(DecodeError, match="not valid Unicode text"):
            from_structured(document.encode())


@given(envelopes(), st.integers(min_value=0, max_value=253_402_300_799_999_999))
def test_an_envelope_stamped_with_its_time_is_the_envelope_with_that_time(
    envelope: Envelope, stamp: int
) -> None:
    """The publish path gives the time as a stamp (microseconds since the epoch) and makes
    the datetime only when ``time`` is read; nothing a user or the wire sees may differ."""
    fields = {f.name: getattr(envelope, f.name) for f in dataclasses.fields(Envelope) if f.init}
    del fields["specversion"], fields["time"]
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=stamp)
    eager = new_envelope(**fields, time=moment)

    def stamped() -> Envelope:
        return new_envelope(**fields, stamp=stamp)

    assert time_text(stamped()) == time_text(eager)
    assert to_binary(stamped()) == to_binary(eager)
    assert to_structured(stamped()) == to_structured(eager)
    assert stamped().attributes() == eager.attributes()
    assert from_structured(to_structured(stamped())).time == moment
    lazy = stamped()
    assert lazy == eager
    assert hash(lazy) == hash(eager)
    assert repr(lazy) == repr(eager)
    assert lazy.time == moment
    assert lazy.time.tzinfo is timezone.utc
    assert lazy.time is lazy.time  # made once, then kept
    assert stamped().replace(subject="other").time == moment
    assert copy.copy(stamped()) == eager
    with pytest.raises(dataclasses.FrozenInstanceError):
        lazy.time = moment  # type: ignore[misc]


def test_an_envelope_without_the_attribute_asked_for_says_so() -> None:
    envelope = new_envelope("1", "t", "s", stamp=0)
    with pytest.raises(AttributeError, match="'Envelope' object has no attribute 'tim'"):
        envelope.tim  # type: ignore[attr-defined]  # noqa: B018
