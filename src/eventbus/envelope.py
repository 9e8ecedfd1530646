"""The envelope every event travels in, and its wire codecs.

:class:`Envelope` carries the CloudEvents 1.0 context attributes, eventbus's extensions
(``partitionkey``, ``correlationid``, ``causationid``, ``dataversion``, ``traceparent``,
``tracestate``), any other extension attributes, and the encoded payload as bytes. Binary
content mode (attributes in ``ce_`` headers, the payload as the body): :func:`to_binary` /
:func:`from_binary`; structured content mode (one ``application/cloudevents+json`` document):
:func:`to_structured` / :func:`from_structured`. :func:`decode` reads either, with the header
prefixes of other CloudEvents producers too (``ce-``, ``cloudEvents_``, ``cloudEvents:``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from eventbus.errors import DecodeError
from eventbus.plaindocument import read_plain
from eventbus.wirevalues import (
    dumps,
    format_stamp,
    format_time,
    is_json_content_type,
    loads,
    parse_int,
    parse_time,
    refuse_lone_surrogates,
    stamp_time,
    structured_data,
    text,
)

__all__ = [
    "OPTIONAL_TEXT_ATTRIBUTES",
    "STRUCTURED_CONTENT_TYPE",
    "Envelope",
    "binary_headers",
    "decode",
    "from_binary",
    "from_stored",
    "from_structured",
    "is_json_content_type",
    "new_envelope",
    "to_binary",
    "time_text",
    "to_structured",
    "validate_extension_name",
]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_EMPTY: Mapping[str, str] = MappingProxyType({})
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,64}$")
_UTC = timezone.utc
# Attributes with a field of their own; everything else read from the wire is an extension.
_STRING_ATTRS = (
    "id",
    "source",
    "type",
    "subject",
    "dataschema",
    "partitionkey",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
)
OPTIONAL_TEXT_ATTRIBUTES = _STRING_ATTRS[3:]
"""The text attributes an envelope may leave unset, in the order binary mode writes them."""
_KNOWN = frozenset(
    (*_STRING_ATTRS, "specversion", "time", "datacontenttype", "dataversion", "data", "data_base64")
)
_PREFIXES = ("ce_", "ce-", "cloudevents_", "cloudevents:")
# The header names this library writes, resolved once; anything else goes the slow way.
_HEADER_NAMES = {
    prefix + name: name
    for prefix in ("ce_", "ce-")
    for name in (*_STRING_ATTRS, "specversion", "time", "dataversion")
}
_HEADER_NAMES["content-type"] = "datacontenttype"


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """An event on the wire: CloudEvents attributes, extensions and the encoded payload.

    ``id`` is assigned once by the producer and never changes: redeliveries, retries and replays
    carry the same id, which is what idempotent consumers key on. ``data`` holds the encoded
    payload (JSON text for JSON content types).
    """

    id: str
    type: str
    source: str
    data: bytes = b""
    time: datetime | None = None
    subject: str | None = None
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    specversion: str = "1.0"
    partitionkey: str | None = None
    correlationid: str | None = None
    causationid: str | None = None
    dataversion: int | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    extensions: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)
    _stamp: int | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    """``time`` in microseconds since the epoch, where it is made when read (new_envelope)."""

    def __post_init__(self) -> None:
        if self.extensions and not isinstance(self.extensions, MappingProxyType):
            object.__setattr__(self, "extensions", MappingProxyType(dict(self.extensions)))

    def __hash__(self) -> int:
        return hash((self.source, self.id))

    def replace(self, **changes: Any) -> Envelope:
        """A copy with some attributes changed (the envelope itself is immutable)."""
        return dataclasses.replace(self, **changes)

    def json(self) -> Any:
        """The payload parsed as JSON (for handlers that take the raw envelope)."""
        return json.loads(self.data) if self.data else None

    def attributes(self) -> dict[str, Any]:
        """Every attribute that is set, by its CloudEvents name (``data`` excluded)."""
        out = self._attributes()
        if self._stamp is None and self.time is not None:  # (a stamp's text is there already)
            out["time"] = format_time(self.time)
        return out

    def _attributes(self) -> dict[str, Any]:
        """:meth:`attributes` with a UTC ``time`` as the stamp's text or the datetime (which
        pydantic-core writes as :func:`format_time` does), else absent; runs for every publish."""
        out: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        if self.subject is not None:
            out["subject"] = self.subject
        if self.dataschema is not None:
            out["dataschema"] = self.dataschema
        if self.partitionkey is not None:
            out["partitionkey"] = self.partitionkey
        if self.correlationid is not None:
            out["correlationid"] = self.correlationid
        if self.causationid is not None:
            out["causationid"] = self.causationid
        if self.traceparent is not None:
            out["traceparent"] = self.traceparent
        if self.tracestate is not None:
            out["tracestate"] = self.tracestate
        if self._stamp is not None:
            out["time"] = format_stamp(self._stamp)
        elif (time := self.time) is not None and time.tzinfo is _UTC:
            out["time"] = time
        out["datacontenttype"] = self.datacontenttype
        if self.dataversion is not None:
            out["dataversion"] = self.dataversion
        if self.extensions:
            out.update(self.extensions)
        return out


def _lazy_time(slot: Any) -> property:
    """``time`` over its slot, which a stamped envelope leaves empty until it is first read
    (a ``__getattr__`` instead would slow every attribute read of every envelope)."""

    def time(envelope: Envelope) -> datetime | None:
        try:
            return slot.__get__(envelope, Envelope)  # type: ignore[no-any-return]
        except AttributeError:  # stamped, and read for the first time
            value = stamp_time(envelope._stamp)  # type: ignore[arg-type]
            slot.__set__(envelope, value)
            return value

    return property(time, slot.__set__, doc="When the event happened (UTC), or None.")


setattr(Envelope, "time", _lazy_time(Envelope.__dict__["time"]))  # noqa: B010 (typed: the field)


class _Draft:
    """An envelope under construction: the same slots as :class:`Envelope`, but writable."""

    __slots__ = Envelope.__slots__


def new_envelope(
    id: str,
    type: str,
    source: str,
    data: bytes = b"",
    time: datetime | None = None,
    subject: str | None = None,
    datacontenttype: str = "application/json",
    dataschema: str | None = None,
    partitionkey: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
    dataversion: int | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    extensions: Mapping[str, str] = _EMPTY,
    stamp: int | None = None,
) -> Envelope:
    """``Envelope(...)`` for code that already holds valid attributes, at a seventh of the cost.

    A frozen dataclass sets each of its 16 fields through ``object.__setattr__``; this fills a
    writable object with the same slot layout and then makes it an :class:`Envelope`, which is
    as immutable as any other. ``extensions`` must already be read-only (or empty).

    ``stamp`` (microseconds since the Unix epoch) stands for ``time``, which is made when
    first read: the codecs write the stamp itself (a datetime costs more than anything else).
    """
    draft: Any = _Draft()
    draft.id = id
    draft.type = type
    draft.source = source
    draft.data = data
    if stamp is None:
        draft.time = time
    draft._stamp = stamp
    draft.subject = subject
    draft.datacontenttype = datacontenttype
    draft.dataschema = dataschema
    draft.specversion = "1.0"
    draft.partitionkey = partitionkey
    draft.correlationid = correlationid
    draft.causationid = causationid
    draft.dataversion = dataversion
    draft.traceparent = traceparent
    draft.tracestate = tracestate
    draft.extensions = extensions
    draft.__class__ = Envelope
    return draft  # type: ignore[no-any-return]


def validate_extension_name(name: str) -> str:
    """CloudEvents extension attribute names are lowercase letters and digits only."""
    if not _EXTENSION_NAME.match(name) or name in _KNOWN or name == "specversion":
        suggestion = re.sub(r"[^a-z0-9]", "", name.lower())
        hint = f"; try {suggestion!r}" if suggestion and suggestion not in _KNOWN else ""
        raise ValueError(
            f"invalid header name {name!r}: headers travel as CloudEvents extension attributes, "
            f"whose names are 1-64 lowercase letters or digits and not a reserved attribute{hint}"
        )
    return name


def _build(attrs: Mapping[str, Any], data: bytes, key: str | None = None) -> Envelope:
    """Make an envelope from attributes read off the wire, checking the required ones: a
    draft (see :func:`new_envelope`), one lookup per attribute, the names walked only when
    there are extensions among them (this runs for every delivery)."""
    get = attrs.get
    id_, source, type_, spec = get("id"), get("source"), get("type"), get("specversion")
    if not (id_ and source and type_ and spec):
        missing = [name for name in ("id", "source", "type", "specversion") if not get(name)]
        raise DecodeError(f"not a CloudEvent: required attribute(s) {', '.join(missing)} missing")
    if spec != "1.0" and str(spec) != "1.0":
        raise DecodeError(f"unsupported CloudEvents specversion {spec!r}; need 1.0")
    draft: Any = _Draft()
    draft.specversion, draft.data = "1.0", data
    draft.id = id_ if type(id_) is str else text(id_)
    draft.source = source if type(source) is str else text(source)
    draft.type = type_ if type(type_) is str else text(type_)
    draft.subject = v if type(v := get("subject")) is str or v is None else text(v)
    draft.dataschema = v if type(v := get("dataschema")) is str or v is None else text(v)
    draft.partitionkey = v if type(v := get("partitionkey")) is str or v is None else text(v)
    draft.correlationid = v if type(v := get("correlationid")) is str or v is None else text(v)
    draft.causationid = v if type(v := get("causationid")) is str or v is None else text(v)
    draft.traceparent = v if type(v := get("traceparent")) is str or v is None else text(v)
    draft.tracestate = v if type(v := get("tracestate")) is str or v is None else text(v)
    v = get("datacontenttype")
    draft.datacontenttype = _JSON if v is None else v if type(v) is str else text(v)
    draft.time = None if (v := get("time")) is None else parse_time(v)
    draft._stamp = None
    draft.dataversion = v if type(v := get("dataversion")) is int or v is None else parse_int(v)
    if key is not None and draft.partitionkey is None:
        draft.partitionkey = key
    draft.extensions = _EMPTY if attrs.keys() <= _KNOWN else _extensions(attrs)
    draft.__class__ = Envelope
    return draft  # type: ignore[no-any-return]


def _extensions(attrs: Mapping[str, Any]) -> Mapping[str, str]:
    """The attributes without a field of their own, as text (read-only)."""
    found = {name: text(v) for name, v in attrs.items() if name not in _KNOWN and v is not None}
    return MappingProxyType(found) if found else _EMPTY


_JSON = "application/json"


def to_binary(envelope: Envelope, prefix: str = "ce_") -> tuple[dict[str, str], bytes]:
    """Binary content mode: ``({prefix+attr: value, "content-type": ...}, payload)``."""
    return dict(binary_headers(envelope, prefix)), envelope.data


def binary_headers(envelope: Envelope, prefix: str = "ce_") -> Iterator[tuple[str, str]]:
    """The headers of :func:`to_binary` as ``(name, value)`` pairs, for a list of headers."""
    names = _BINARY_NAMES.get(prefix) or _binary_names(prefix)
    yield names[0][1], envelope.specversion
    for attr, header in names[1:]:
        value = getattr(envelope, attr)
        if value is not None:
            yield header, value
    if (time := time_text(envelope)) is not None:
        yield prefix + "time", time
    if envelope.dataversion is not None:
        yield prefix + "dataversion", str(envelope.dataversion)
    if envelope.extensions:
        for name, value in envelope.extensions.items():
            yield prefix + name, value
    yield "content-type", envelope.datacontenttype


_BINARY_NAMES: dict[str, tuple[tuple[str, str], ...]] = {}


def _binary_names(prefix: str) -> tuple[tuple[str, str], ...]:
    """``(attribute, header)`` for specversion and the string attributes, per prefix."""
    names = tuple((name, prefix + name) for name in ("specversion", *_STRING_ATTRS))
    if len(_BINARY_NAMES) < 16:
        _BINARY_NAMES[prefix] = names
    return names


def from_binary(
    headers: Mapping[str, Any], body: bytes | None, *, key: str | bytes | None = None
) -> Envelope:
    """Read binary content mode with any of the known header prefixes.

    ``key`` is the broker's message key (Kafka); it becomes ``partitionkey`` when no
    ``partitionkey`` attribute is present, as the CloudEvents Kafka binding prescribes.
    """
    try:
        attrs: dict[str, Any] = {}
        for name, value in headers.items():
            attr = _HEADER_NAMES.get(name) or _header_attribute(name)
            if attr is not None:
                if type(value) is bytes:  # Kafka's header values: UTF-8 text, or refused
                    value = value.decode()
                attrs[attr] = value
        return _build(attrs, body or b"", text(key) if key is not None else None)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"attribute value is not UTF-8 text: {exc.object[:40]!r}") from exc
    except DecodeError:
        raise
    except Exception as exc:  # decoding is total: whatever the input, a DecodeError
        raise _undecodable(exc) from exc


def from_stored(headers: str | bytes, body: bytes) -> Envelope:
    """An envelope kept in a table row (its binary-mode headers as one JSON object, its data)."""
    return from_binary(loads(headers, "the stored headers column")[0], body)


def _header_attribute(name: str) -> str | None:
    """The attribute a binary-mode header carries (``ce_id`` → ``id``), or None."""
    lower = name.lower()
    if lower in ("content-type", "content_type"):
        return "datacontenttype"
    for prefix in _PREFIXES:
        if lower.startswith(prefix):
            return lower[len(prefix) :]
    return None


def time_text(envelope: Envelope) -> str | None:
    """``time`` as the wire carries it (RFC 3339), from the stamp when there is one."""
    if envelope._stamp is not None:
        return format_stamp(envelope._stamp)
    return None if envelope.time is None else format_time(envelope.time)


def to_structured(envelope: Envelope) -> bytes:
    """Structured content mode: one ``application/cloudevents+json`` document."""
    attrs = envelope._attributes()
    if "time" not in attrs and envelope.time is not None:  # not UTC: written by format_time
        attrs["time"] = format_time(envelope.time)
    if not envelope.data:
        return dumps(attrs)
    if is_json_content_type(envelope.datacontenttype):
        return dumps(attrs)[:-1] + b',"data":' + envelope.data + b"}"
    attrs["data_base64"] = base64.b64encode(envelope.data).decode("ascii")
    return dumps(attrs)


def from_structured(body: bytes | str, *, key: str | bytes | None = None) -> Envelope:
    """Read one structured-mode JSON document.

    With msgspec installed (the ``redis`` extra), a document with no extension attributes and
    JSON ``data`` keeps ``data`` exactly as it was published; otherwise ``data`` is parsed and
    written again as compact JSON. The two differ only for a payload written with whitespace
    or escapes, and they mean the same JSON."""
    if read_plain is not None and (fields := read_plain(body, key)) is not None:
        return new_envelope(*fields)
    try:
        document, strict = loads(body)
        if not isinstance(document, dict):
            raise DecodeError("structured CloudEvent must be a JSON object")
        if not strict:
            refuse_lone_surrogates(document)
        data = structured_data(document)
        return _build(document, data, text(key) if key is not None else None)
    except DecodeError:
        raise
    except Exception as exc:  # decoding is total: whatever the input, a DecodeError
        raise _undecodable(exc) from exc


def decode(
    headers: Mapping[str, Any], body: bytes | None, *, key: str | bytes | None = None
) -> Envelope:
    """Read a message in whichever CloudEvents mode it arrived (the lenient consumer rules).

    Structured if the content type starts with ``application/cloudevents``; binary if any
    header has a CloudEvents prefix; structured if the body is a JSON object with
    ``specversion``; anything else raises :class:`~eventbus.errors.DecodeError`.
    """
    try:
        content_type = text(headers.get("content-type") or headers.get("content_type") or "")
        if content_type.lower().startswith("application/cloudevents"):
            return from_structured(body or b"", key=key)
        if "ce_id" in headers or "ce-id" in headers:  # what eventbus writes: no prefix scan
            return from_binary(headers, body, key=key)
        if any(name.lower().startswith(_PREFIXES) for name in headers):
            return from_binary(headers, body, key=key)
        if body and body.lstrip()[:1] == b"{":
            return from_structured(body, key=key)
    except DecodeError:
        raise
    except Exception as exc:  # decoding is total: whatever the input, a DecodeError
        raise _undecodable(exc) from exc
    raise DecodeError(
        "message is not a CloudEvent: no ce_/ce-/cloudEvents_ headers and no structured JSON body"
    )


def _undecodable(exc: BaseException) -> DecodeError:
    return DecodeError(f"message cannot be decoded: {type(exc).__name__}: {exc!s:.200}")
