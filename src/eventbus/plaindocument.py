"""The fast reader of plain structured-mode documents, used when msgspec is installed.

Most structured documents a consumer reads were written by eventbus: the required
attributes, some of the optional ones eventbus has fields for, a JSON ``data`` and nothing
else. msgspec reads such a document straight into typed fields and hands ``data`` over as
the bytes that were published, without turning them into Python objects and writing them
out again: a quarter of the work of the general reader in :mod:`eventbus.envelope`.

:data:`read_plain` answers ``None`` for any other document (an extension attribute,
``data_base64``, text data, a value of another type, a missing attribute, text that is not
valid JSON or not valid Unicode) and the caller reads it the general way, so that what is
accepted, and every error message, is the same with msgspec or without it. msgspec comes
with the ``redis`` extra (the broker that carries structured documents); without it
:data:`read_plain` is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventbus.wirevalues import is_json_content_type, parse_time, text

__all__ = ["read_plain"]

Fields = tuple[Any, ...]
"""The positional arguments of :func:`eventbus.envelope.new_envelope`, extensions left out."""

read_plain: Callable[[bytes | str, str | bytes | None], Fields | None] | None

try:
    import msgspec
except ImportError:  # every document goes the general way
    read_plain = None
else:

    class PlainDocument(msgspec.Struct, forbid_unknown_fields=True, gc=False):
        """The attributes eventbus writes, each of the type it writes it with."""

        specversion: str
        id: str
        source: str
        type: str
        data: msgspec.Raw = msgspec.Raw(b"")
        time: str | None = None
        subject: str | None = None
        datacontenttype: str | None = None
        dataschema: str | None = None
        partitionkey: str | None = None
        correlationid: str | None = None
        causationid: str | None = None
        dataversion: int | None = None
        traceparent: str | None = None
        tracestate: str | None = None

    _decode = msgspec.json.Decoder(PlainDocument).decode

    def _read_plain(body: bytes | str, key: str | bytes | None) -> Fields | None:
        """The envelope fields of a plain document, or ``None`` to read it the general way."""
        try:
            plain = _decode(body)
        except Exception:  # whatever msgspec refuses, the general reader reads or explains
            return None
        content_type = plain.datacontenttype
        if not (plain.id and plain.source and plain.type) or plain.specversion != "1.0":
            return None
        if content_type is not None and not is_json_content_type(content_type):
            return None  # text data is stored unquoted: the general reader knows how
        data = bytes(plain.data)
        partitionkey = plain.partitionkey
        return (
            plain.id,
            plain.type,
            plain.source,
            b"" if data == b"null" else data,
            None if plain.time is None else parse_time(plain.time),
            plain.subject,
            "application/json" if content_type is None else content_type,
            plain.dataschema,
            text(key) if partitionkey is None and key is not None else partitionkey,
            plain.correlationid,
            plain.causationid,
            plain.dataversion,
            plain.traceparent,
            plain.tracestate,
        )

    read_plain = _read_plain
