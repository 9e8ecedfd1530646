"""A Kafka record's value, key and headers for an envelope, and the envelope read back.

Binary content mode with ``ce_`` headers and UTF-8 byte values, as the CloudEvents Kafka
binding writes it. This runs for every record published and every record delivered, so the
headers eventbus itself writes are handled attribute by attribute (:func:`record_of`), and
read back from the record's list of headers in the order they were written
(:func:`read_record`); anything else (a retry copy, an extension, another producer's record)
goes through the general codec of :mod:`eventbus.envelope`, which reads every CloudEvents
producer's records and names what is wrong with a bad one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventbus.brokers.kafka.driver import Headers
from eventbus.envelope import (
    OPTIONAL_TEXT_ATTRIBUTES,
    Envelope,
    binary_headers,
    new_envelope,
    time_text,
)
from eventbus.wirevalues import parse_time

__all__ = ["read_record", "record_headers", "record_of"]


def record_of(envelope: Envelope) -> tuple[bytes, bytes | None, Headers]:
    """Value, key and headers of the record that carries ``envelope``."""
    key = envelope.partitionkey
    return envelope.data, None if key is None else key.encode(), record_headers(envelope)


def record_headers(envelope: Envelope) -> Headers:
    """The ``ce_`` headers of :func:`~eventbus.envelope.binary_headers`, as UTF-8 bytes.

    Written out for the attributes every event has; the values that repeat from one event to
    the next (source, type, content type) are encoded once (:func:`_encoded`)."""
    time = time_text(envelope)
    if envelope.specversion != "1.0" or time is None or envelope.extensions:
        return [(name, value.encode()) for name, value in binary_headers(envelope)]
    encoded = _ENCODED.get
    ident = envelope.id.encode()
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ident),
        ("ce_source", encoded(envelope.source) or _encoded(envelope.source)),
        ("ce_type", encoded(envelope.type) or _encoded(envelope.type)),
    ]
    # One test per attribute, in binary_headers' order (a loop over them costs four times as
    # much); the correlation id of a conversation's first event is its own id.
    if (value := envelope.subject) is not None:
        headers.append(("ce_subject", value.encode()))
    if (value := envelope.dataschema) is not None:
        headers.append(("ce_dataschema", value.encode()))
    if (value := envelope.partitionkey) is not None:
        headers.append(("ce_partitionkey", value.encode()))
    if (value := envelope.correlationid) is not None:
        headers.append(("ce_correlationid", ident if value == envelope.id else value.encode()))
    if (value := envelope.causationid) is not None:
        headers.append(("ce_causationid", value.encode()))
    if (value := envelope.traceparent) is not None:
        headers.append(("ce_traceparent", value.encode()))
    if (value := envelope.tracestate) is not None:
        headers.append(("ce_tracestate", value.encode()))
    headers.append(("ce_time", time.encode()))
    if envelope.dataversion is not None:
        version = envelope.dataversion
        headers.append(("ce_dataversion", _VERSIONS.get(version) or str(version).encode()))
    content_type = envelope.datacontenttype
    headers.append(("content-type", encoded(content_type) or _encoded(content_type)))
    return headers


_VERSIONS = {version: str(version).encode() for version in range(1, 33)}
_ENCODED: dict[str, bytes] = {}


def _encoded(value: str) -> bytes:
    """``value`` as UTF-8, remembered (up to a bound) for the records that follow."""
    data = value.encode()
    if len(_ENCODED) < 4096:
        _ENCODED[value] = data
    return data


_JSON = b"application/json"

_MIDDLE = {"ce_" + name: at for at, name in enumerate(OPTIONAL_TEXT_ATTRIBUTES)}
"""The optional text attributes between ``ce_type`` and ``ce_time``, in the order
:func:`record_headers` writes them."""


def read_record(
    headers: Sequence[tuple[str, Any]], body: bytes | None, key: bytes | None
) -> Envelope | None:
    """The envelope of a record whose headers are exactly those :func:`record_headers` writes,
    in its order: an original that eventbus published, with no extension and nothing carried
    (no ``eventbus-*`` header). None for any other record, and for a value that does not
    decode, which the caller reads the general way (``eventbus.envelope.decode``).

    The list is read front to back, with no mapping built: the four required attributes
    first, ``content-type`` last, ``ce_time`` (and ``ce_dataversion``) before it, and between
    them the optional attributes, each at most once and in order."""
    count = len(headers)
    if count < 6:
        return None
    (n0, spec), (n1, ident), (n2, source), (n3, kind) = headers[:4]
    last, content_type = headers[-1]
    if (
        n0 != "ce_specversion"
        or spec != b"1.0"
        or n1 != "ce_id"
        or n2 != "ce_source"
        or n3 != "ce_type"
        or last != "content-type"
    ):
        return None
    end, version = count - 2, None
    name, time = headers[end]
    if name == "ce_dataversion":
        end, version = end - 1, time
        name, time = headers[end]
    if name != "ce_time" or not (ident and source and kind):
        return None
    optional: list[Any] = [None] * 7
    previous = -1
    for at in range(4, end):
        name, value = headers[at]
        slot = _MIDDLE.get(name, -1)
        if slot <= previous or value is None:
            return None  # unknown, repeated, out of order, or null
        optional[slot] = value
        previous = slot
    subject, dataschema, partitionkey, correlationid, causationid, traceparent, tracestate = (
        optional
    )
    try:
        event_id = ident.decode()
        key_text = None if key is None else key.decode()  # refused when not UTF-8, as there
        return new_envelope(  # positional: the 14 attributes in new_envelope's order
            event_id,
            kind.decode(),
            source.decode(),
            body or b"",
            None if time is None else parse_time(time.decode()),
            None if subject is None else subject.decode(),
            "application/json"
            if content_type is None or content_type == _JSON
            else content_type.decode(),
            None if dataschema is None else dataschema.decode(),
            key_text if partitionkey is None else partitionkey.decode(),
            None
            if correlationid is None
            else event_id
            if correlationid == ident
            else correlationid.decode(),
            None if causationid is None else causationid.decode(),
            None if version is None else int(version),
            None if traceparent is None else traceparent.decode(),
            None if tracestate is None else tracestate.decode(),
        )
    except Exception:  # not UTF-8, a null or empty value, a bad time: the general reader says
        return None
