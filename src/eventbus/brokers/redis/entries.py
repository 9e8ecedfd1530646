"""The stream entries the adapter writes and reads: events, redelivered copies, dead letters.

* **Published** — ``{"data": <structured CloudEvents JSON>, "content-type":
  "application/cloudevents+json"}``, the convention Dapr uses, so any tool can read it. Entries
  written by others are read too: structured JSON in ``data`` without a content type, or
  binary-mode ``ce_*``/``ce-*`` fields with the payload in ``data``; a ``partitionkey`` field
  is the key when the event carries none.
* **Read** — ``body`` is ``data``, ``headers`` every other field (a value that is not UTF-8
  stays bytes, so that it can be sent again unchanged).
* **Redelivered** — the entry's own fields again, with the delivery's attempt and metadata
  carried in ``eventbus-*`` fields (:func:`eventbus.brokers._wire.carried_headers`).
* **Dead letter** — ``data`` = the original bytes, the original headers as fields, and the
  provenance as ``eventbus-dlq-*`` fields (:func:`eventbus.deadletters.provenance`), read back
  with :func:`eventbus.deadletters.from_provenance`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eventbus.brokers._wire import carried_headers, text, without_carried
from eventbus.deadletters import DLQ_PREFIX, DeadLetterRecord, from_provenance, provenance
from eventbus.envelope import STRUCTURED_CONTENT_TYPE, Envelope, decode, from_structured
from eventbus.errors import DecodeError

__all__ = [
    "DEAD_LETTER_ID",
    "copy_fields",
    "dead_letter_fields",
    "dead_letter_record",
    "decode_entry",
    "foreign",
    "headers_of",
    "own_entry",
    "published",
    "replayed_fields",
]

DEAD_LETTER_ID = DLQ_PREFIX + "id"
"""The field of a dead-letter entry that holds its id (the purge script looks for it)."""


def published(data: bytes) -> dict[Any, Any]:
    """The entry eventbus writes: a structured CloudEvent and its content type (as bytes,
    which redis-py sends without encoding them again)."""
    return {b"data": data, b"content-type": _STRUCTURED}


_STRUCTURED = STRUCTURED_CONTENT_TYPE.encode()


def own_entry(fields: Mapping[bytes, bytes]) -> bool:
    """Whether ``fields`` are exactly what :func:`published` writes: their headers are then
    ``{"content-type": STRUCTURED_CONTENT_TYPE}``, nothing carried, and ``data`` a structured
    document (what :func:`headers_of` and :func:`decode_entry` would find, known at once)."""
    return len(fields) == 2 and fields.get(b"content-type") == _STRUCTURED and b"data" in fields


def foreign(body: bytes, headers: Mapping[str, Any] | None, key: str | None) -> dict[Any, Any]:
    """An entry as a foreign producer writes it: ``data`` = ``body``, the headers as fields."""
    fields: dict[Any, Any] = {"data": body, **(headers or {})}
    if key is not None:
        fields["partitionkey"] = key
    return fields


def headers_of(fields: Mapping[bytes, bytes]) -> dict[str, str | bytes]:
    """Every field of an entry but ``data``: values as text where they are UTF-8 and as the
    bytes themselves where not, so that they can be sent again unchanged; names as text (one
    that is not UTF-8, which only a foreign producer writes, gets replacement characters)."""
    headers: dict[str, str | bytes] = {}
    for name, value in fields.items():
        if name == b"data":
            continue
        key = name.decode("utf-8", "replace") if type(name) is bytes else text(name)
        headers[key] = _value(value)
    return headers


def decode_entry(
    headers: Mapping[str, Any], body: bytes
) -> tuple[Envelope | None, DecodeError | None]:
    """The envelope an entry holds, or why it holds none."""
    key = headers.get("partitionkey")
    try:
        if headers.get("content-type") == STRUCTURED_CONTENT_TYPE:  # what eventbus writes
            return from_structured(body, key=key), None
        return decode(headers, body, key=key), None
    except DecodeError as exc:
        return None, exc


def _value(value: bytes) -> str | bytes:
    """A field value as text, or the bytes themselves when they are not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _flat(pairs: Iterable[tuple[str, Any]]) -> list[Any]:
    """``name, value, name, value, ...``: fields as ``XADD`` in a script takes them."""
    return [part for pair in pairs for part in pair]


def _own(headers: Mapping[str, Any], body: bytes) -> list[Any]:
    """``data`` and the message's own fields: none of the adapter's ``eventbus-*`` ones."""
    return ["data", body, *_flat(without_carried(headers).items())]


def copy_fields(
    headers: Mapping[str, Any], body: bytes, attempt: int, metadata: Mapping[str, str]
) -> list[Any]:
    """The fields of a redelivered copy: the entry's own, ``attempt`` and ``metadata``."""
    return _own(headers, body) + _flat(carried_headers(attempt, metadata).items())


def replayed_fields(record: DeadLetterRecord) -> list[Any]:
    """The fields of a replayed dead letter: the original entry (attempt 1, no metadata)."""
    return _own(record.headers, record.body)


def dead_letter_fields(record: DeadLetterRecord) -> list[Any]:
    """The fields of a dead-letter entry: the original bytes and headers, the provenance."""
    headers = [
        (name, value if isinstance(value, (bytes, str)) else text(value))
        for name, value in record.headers.items()
        if name != "data" and not name.startswith(DLQ_PREFIX)
    ]
    return ["data", record.body, *_flat(headers), *_flat(provenance(record).items())]


def dead_letter_record(fields: Mapping[bytes, bytes]) -> DeadLetterRecord:
    """The record :func:`dead_letter_fields` wrote."""
    headers = headers_of(fields)
    return from_provenance(headers, headers, fields.get(b"data", b""))
