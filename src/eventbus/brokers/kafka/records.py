"""A Kafka record's value, key and headers for an envelope, and the envelope read back.

Binary content mode with ``ce_`` headers and UTF-8 byte values, as the CloudEvents Kafka
binding writes it. This runs for every record published and every record delivered, so the
headers eventbus itself writes are handled attribute by attribute (:func:`record_of`,
:func:`read_own`); anything else goes through the general codec of :mod:`eventbus.envelope`,
which reads every CloudEvents producer's records and names what is wrong with a bad one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventbus.brokers.kafka.driver import Headers
from eventbus.envelope import (
    OPTIONAL_TEXT_ATTRIBUTES,
    Envelope,
    binary_headers,
    from_binary,
    new_envelope,
)
from eventbus.wirevalues import format_time, parse_time

__all__ = ["read_own", "record_headers", "record_of"]


def record_of(envelope: Envelope) -> tuple[bytes, bytes | None, Headers]:
    """Value, key and headers of the record that carries ``envelope``."""
    key = envelope.partitionkey
    return envelope.data, None if key is None else key.encode(), record_headers(envelope)


def record_headers(envelope: Envelope) -> Headers:
    """The ``ce_`` headers of :func:`~eventbus.envelope.binary_headers`, as UTF-8 bytes.

    Written out for the attributes every event has; the values that repeat from one event to
    the next (source, type, content type) are encoded once (:func:`_encoded`)."""
    if envelope.specversion != "1.0" or envelope.time is None or envelope.extensions:
        return [(name, value.encode()) for name, value in binary_headers(envelope)]
    encoded = _ENCODED.get
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", envelope.id.encode()),
        ("ce_source", encoded(envelope.source) or _encoded(envelope.source)),
        ("ce_type", encoded(envelope.type) or _encoded(envelope.type)),
    ]
    for attr, name in _OPTIONAL:
        value = getattr(envelope, attr)
        if value is not None:
            headers.append((name, value.encode()))
    headers.append(("ce_time", format_time(envelope.time).encode()))
    if envelope.dataversion is not None:
        version = envelope.dataversion
        headers.append(("ce_dataversion", _VERSIONS.get(version) or str(version).encode()))
    content_type = envelope.datacontenttype
    headers.append(("content-type", encoded(content_type) or _encoded(content_type)))
    return headers


_OPTIONAL = tuple((name, f"ce_{name}") for name in OPTIONAL_TEXT_ATTRIBUTES)
_VERSIONS = {version: str(version).encode() for version in range(1, 33)}
_ENCODED: dict[str, bytes] = {}


def _encoded(value: str) -> bytes:
    """``value`` as UTF-8, remembered (up to a bound) for the records that follow."""
    data = value.encode()
    if len(_ENCODED) < 4096:
        _ENCODED[value] = data
    return data


_OWN = frozenset(
    (
        *("content-type", "ce_specversion", "ce_id", "ce_source", "ce_type"),
        *(name for _, name in _OPTIONAL),
        *("ce_time", "ce_dataversion"),
    )
)
_JSON = b"application/json"


def read_own(
    headers: Mapping[str, Any], body: bytes | None, *, key: bytes | None = None
) -> Envelope:
    """:func:`~eventbus.envelope.from_binary` for the headers :func:`record_headers` writes
    (no extensions, byte values), each attribute looked up by name in one pass; any other
    headers, or a value that does not decode, go through ``from_binary`` itself."""
    if headers.keys() <= _OWN and headers.get("ce_specversion") == b"1.0":
        try:
            envelope = _read(headers.get, body or b"", key)
        except Exception:  # the general reader below names what is wrong
            envelope = None
        if envelope is not None:
            return envelope
    return from_binary(headers, body, key=key)


def _read(get: Any, body: bytes, key: bytes | None) -> Envelope | None:
    """The envelope of headers known to be eventbus's own names (``get`` looks them up)."""
    ident, source, kind = get("ce_id"), get("ce_source"), get("ce_type")
    if not (ident and source and kind):
        return None  # the general reader names the missing attribute
    time, version, content_type = get("ce_time"), get("ce_dataversion"), get("content-type")
    key_text = None if key is None else key.decode()  # refused when not UTF-8, as there
    partitionkey, subject = get("ce_partitionkey"), get("ce_subject")
    dataschema, correlationid = get("ce_dataschema"), get("ce_correlationid")
    causationid, traceparent, tracestate = (
        get("ce_causationid"),
        get("ce_traceparent"),
        get("ce_tracestate"),
    )
    return new_envelope(
        id=ident.decode(),
        type=kind.decode(),
        source=source.decode(),
        data=body,
        time=None if time is None else parse_time(time.decode()),
        subject=None if subject is None else subject.decode(),
        datacontenttype=(
            "application/json"
            if content_type is None or content_type == _JSON
            else content_type.decode()
        ),
        dataschema=None if dataschema is None else dataschema.decode(),
        partitionkey=key_text if partitionkey is None else partitionkey.decode(),
        correlationid=None if correlationid is None else correlationid.decode(),
        causationid=None if causationid is None else causationid.decode(),
        dataversion=None if version is None else int(version),
        traceparent=None if traceparent is None else traceparent.decode(),
        tracestate=None if tracestate is None else tracestate.decode(),
    )
