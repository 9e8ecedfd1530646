"""How attribute values and JSON documents are read off the wire and written to it.

The value rules of the CloudEvents codecs in :mod:`eventbus.envelope`, apart from the
envelope: times in RFC 3339 (``Z`` for UTC), attribute values as text (bytes must be UTF-8),
integers, and JSON parsed and written with pydantic-core, the standard library standing in
for what pydantic-core refuses. Anything unreadable raises
:class:`~eventbus.errors.DecodeError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pydantic_core

from eventbus.errors import DecodeError

__all__ = [
    "dumps",
    "format_stamp",
    "format_time",
    "is_json_content_type",
    "loads",
    "parse_int",
    "parse_time",
    "refuse_lone_surrogates",
    "stamp_time",
    "structured_data",
    "text",
]


def format_time(value: datetime) -> str:
    """RFC 3339, ``Z`` for UTC; a naive time is taken as UTC."""
    if value.tzinfo is _UTC:  # what eventbus makes and reads: pydantic-core's writer, 3x faster
        return pydantic_core.to_json(value)[1:-1].decode()
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    offset = value.utcoffset()
    if offset is not None and offset % _MINUTE:  # RFC 3339 offsets are whole minutes
        value = value.astimezone(_UTC)
    written = value.isoformat()
    return written[:-6] + "Z" if written.endswith("+00:00") else written


_UTC = timezone.utc
_MINUTE = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)


def stamp_time(stamp: int) -> datetime:
    """The UTC time ``stamp`` microseconds after the Unix epoch (exact: no float between)."""
    return _EPOCH + timedelta(microseconds=stamp)


def format_stamp(stamp: int) -> str:
    """``format_time(stamp_time(stamp))``, without making the datetime: the text up to the
    seconds is made once per second, the microseconds are written onto it."""
    second, micro = divmod(stamp, 1_000_000)
    cached, prefix = _second
    if second != cached:
        prefix = _seconds(second)
    return f"{prefix}.{micro:06d}Z" if micro else prefix + "Z"


def _seconds(second: int) -> str:
    global _second
    prefix = format_time(stamp_time(second * 1_000_000))[:-1]  # "YYYY-MM-DDTHH:MM:SS"
    _second = (second, prefix)  # one tuple: a thread reads a pair that belongs together
    return prefix


_second = (-1, "")


def parse_time(value: Any) -> datetime:
    if type(value) is str and value[-1:] == "Z":  # what eventbus writes: the fast way
        try:  # Python 3.11 reads the Z itself; 3.10 refuses it and goes the way below
            return datetime.fromisoformat(value)
        except ValueError:
            pass  # the checks below name what is wrong
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=timezone.utc)  # AMQP timestamps: ms
        except (OverflowError, OSError, ValueError) as exc:
            raise DecodeError(f"CloudEvents 'time' {value!r} is not a representable time") from exc
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = text(value)
    if isinstance(value, str):
        iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            parsed = datetime.fromisoformat(iso)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise DecodeError(f"CloudEvents 'time' must be an RFC 3339 timestamp, got {value!r}")


def text(value: Any) -> str:
    """An attribute value read off the wire as text; anything that is not text is refused.

    Bytes (any bytes-like type a driver hands over) must be UTF-8; numbers and Booleans are
    written out as CloudEvents writes them; a datetime (an AMQP timestamp) becomes RFC 3339.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"attribute value is not UTF-8 text: {raw[:40]!r}") from exc
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bool):  # CloudEvents' canonical form of a Boolean
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise DecodeError(f"attribute value must be text, got {type(value).__name__}: {value!r:.60}")


def parse_int(value: Any) -> int:
    try:
        return int(text(value))
    except ValueError as exc:
        raise DecodeError(f"'dataversion' must be an integer: {value!r}") from exc


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8 (pydantic-core's encoder: several times the standard library's
    speed, and the same JSON for the text, numbers and mappings an envelope holds)."""
    return pydantic_core.to_json(value)


def loads(body: bytes | str, what: str = "structured CloudEvent") -> tuple[Any, bool]:
    """``(document, strict)``: JSON parsed by pydantic-core (several times the standard
    library's speed), which refuses escaped lone surrogates (``strict``); what it refuses
    (those, nesting over 200 deep) is parsed again by the standard library, so that exactly
    the documents ``json`` accepts are accepted, and the caller checks the surrogates. Not
    JSON: a :class:`DecodeError` saying that ``what`` is not."""
    try:
        return pydantic_core.from_json(body), True
    except ValueError:
        pass
    try:
        return json.loads(body), False
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}") from exc


def refuse_lone_surrogates(document: Mapping[str, Any]) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``); such text cannot be sent on again."""
    for name, value in document.items():
        if isinstance(value, str) and name != "data":
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DecodeError(f"attribute {name!r} is not valid Unicode text") from exc


def is_json_content_type(content_type: str | None) -> bool:
    """Whether a ``datacontenttype`` names JSON (none at all means JSON, as in CloudEvents)."""
    if not content_type or content_type == _JSON:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base in ("application/json", "text/json") or base.endswith("+json")


_JSON = "application/json"


def structured_data(document: Mapping[str, Any]) -> bytes:
    """The payload of a structured-mode document: ``data_base64`` decoded, text data of a
    non-JSON content type as UTF-8, anything else written again as compact JSON."""
    if "data_base64" in document:
        try:
            return base64.b64decode(document["data_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"'data_base64' is not valid base64: {exc}") from exc
    if "data" not in document or document["data"] is None:
        return b""
    value = document["data"]
    content_type = document.get("datacontenttype")
    if content_type is not None and not isinstance(content_type, str):
        raise DecodeError(f"'datacontenttype' must be a string, got {content_type!r:.60}")
    try:
        if isinstance(value, str) and not is_json_content_type(content_type):
            return value.encode("utf-8")
        try:
            return dumps(value)
        except pydantic_core.PydanticSerializationError:  # deeper than it writes, or not text
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DecodeError(f"'data' is not valid Unicode text: {exc}") from exc
