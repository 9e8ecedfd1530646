"""Turning an ``Event`` into the ``Envelope`` that is published: ids, JSON, causation, headers.

Everything here happens before the broker is involved, so a payload that cannot travel fails
the publish with :class:`~eventbus.errors.PublishError` and nothing is sent.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any

from pydantic_core import PydanticSerializationError

from eventbus.context import current_envelope
from eventbus.envelope import Envelope, new_envelope, validate_extension_name
from eventbus.errors import ConfigurationError, PublishError
from eventbus.event import Event
from eventbus.types import PublishBatchNext, PublishMiddleware, PublishNext, PublishSide

__all__ = [
    "EnvelopeFactory",
    "batch_chain",
    "new_event_id",
    "passthrough",
    "publish_chain",
]

_NO_EXTENSIONS: Mapping[str, str] = MappingProxyType({})
_SET_ELSEWHERE = {
    "correlationid": "publish(..., correlation_id=...)",
    "partitionkey": "publish(..., key=...)",
    "subject": "publish(..., subject=...)",
}


class EnvelopeFactory:
    """Builds the envelopes one service publishes (``source`` = ``service``).

    Inside a handler (the *current* envelope of :mod:`eventbus.context`) a new envelope gets
    ``causationid`` = the handled event's id and carries its ``correlationid`` on, unless a
    ``correlation_id`` is given. ``destinations`` learns where each event type goes.
    """

    def __init__(self, service: str, max_message_bytes: int) -> None:
        self.service = service
        self.max_message_bytes = max_message_bytes
        self.destinations: dict[str, str] = {}
        self._classes: dict[type[Event], tuple[str, int | None]] = {}
        self._header_names: set[str] = set()

    def __call__(
        self,
        event: Event,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
    ) -> Envelope:
        cls = type(event)
        known = self._classes.get(cls)
        if known is None:
            if not isinstance(event, Event):
                raise TypeError(f"publish() takes an Event instance, not {cls.__name__}")
            self.destinations.setdefault(cls.event_type, cls.destination())
            known = self._classes[cls] = (cls.event_type, cls.event_version)
        event_type, event_version = known
        # The payload as JSON, refusing what JSON cannot carry (PublishError, nothing sent).
        # ``Event`` writes NaN and infinities as the bare constants ``NaN``/``Infinity`` (not
        # JSON), so a payload is only parsed again in the rare case those letters occur in it
        # (looking for the bytes ``N`` and ``I`` first: a search for one byte is a memchr,
        # several times cheaper than a search for a word).
        try:
            data = event.__pydantic_serializer__.to_json(event)
        except PydanticSerializationError as exc:
            raise _cannot_encode(event, exc) from exc
        if _N in data or _I in data:
            _refuse_constants(event, data)
        event_id = new_event_id()
        parent = current_envelope.get()
        if correlation_id is not None:
            _check_correlation_id(correlation_id)
        elif parent is not None:
            correlation_id = parent.correlationid or parent.id
        return new_envelope(  # positional (keywords cost a dict per call): in its order
            event_id,
            event_type,
            self.service,
            data,
            None,  # time: made from the stamp (below) when first read
            subject,
            "application/json",
            None,  # dataschema
            None if key is None else str(key),
            correlation_id or event_id,
            parent.id if parent else None,
            event_version,
            None,  # traceparent, tracestate: set by the tracing middleware
            None,
            self._check_headers(headers) if headers else _NO_EXTENSIONS,
            time_ns() // 1000,
        )

    def destination(self, envelope: Envelope) -> str:
        return self.destinations.get(envelope.type, envelope.type)

    def check_size(self, envelope: Envelope) -> Envelope:
        """``envelope``, unless its payload is over ``max_message_bytes`` (PublishError)."""
        size = len(envelope.data)
        if size > self.max_message_bytes:
            raise PublishError(
                f"event {envelope.type!r} is {size} bytes, over this bus's max_message_bytes of "
                f"{self.max_message_bytes}; nothing was sent. Store large content elsewhere and "
                "send a reference, or raise EventBus(..., max_message_bytes=...) as far as the "
                "broker allows"
            )
        return envelope

    def _check_headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in headers.items():
            if name not in self._header_names:
                if name in _SET_ELSEWHERE:
                    raise ConfigurationError(
                        f"header {name!r} is an envelope attribute of its own: set it with "
                        f"{_SET_ELSEWHERE[name]}"
                    )
                try:
                    self._header_names.add(validate_extension_name(name))
                except ValueError as exc:
                    raise ConfigurationError(str(exc)) from None
            if not isinstance(value, str):
                raise ConfigurationError(f"header {name!r} must be a string, got {value!r}")
        return MappingProxyType(dict(headers))


_N, _I = ord("N"), ord("I")
"""The first bytes of ``NaN`` and ``Infinity``, looked for before the words themselves."""


def _cannot_encode(event: Event, exc: Exception) -> PublishError:
    return PublishError(f"cannot encode {type(event).__name__} as JSON: {exc}; nothing was sent")


def _refuse_constants(event: Event, data: bytes) -> None:
    """PublishError when ``data`` holds a bare ``NaN`` or ``Infinity`` (not JSON)."""
    if b"NaN" not in data and b"Infinity" not in data:
        return
    try:
        json.loads(data, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise PublishError(
            f"cannot encode {type(event).__name__} as JSON: {exc}; nothing was sent. To "
            "send NaN and infinities on purpose, give the event model_config = "
            "ConfigDict(ser_json_inf_nan='strings'): they travel as the strings 'NaN', "
            "'Infinity' and '-Infinity' and validate back into floats"
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"a float is {name}, which JSON cannot represent")


def _check_correlation_id(value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ConfigurationError(
            f"correlation_id must be a non-empty string of at most 256 characters, got {value!r}"
        )


_ID_BATCH = 128
_ID_KEEP = int.from_bytes(bytes.fromhex("ffffffffffff0fff3fffffffffffffff") * _ID_BATCH, "big")
_ID_SET = int.from_bytes(bytes.fromhex("00000000000040008000000000000000") * _ID_BATCH, "big")
_ID_ROW = b"00000000-0000-0000-0000-000000000000 "
_ID_COLUMNS = [(digit, digit + sum(digit >= d for d in (8, 12, 16, 20))) for digit in range(32)]
"""Where each of a UUID's 32 hex digits goes in its 36 characters."""
_ids: Iterator[str] = iter(())


def new_event_id() -> str:
    """A fresh event id: a random (version 4) UUID as text.

    Ids are made 128 at a time from one ``os.urandom`` read: one mask sets the version and
    variant bits of all of them, and the hex digits are copied a column at a time into rows
    of a template that holds the dashes. Handing one out takes the next of a list (safe
    across threads); a forked child drops the ones made, so parent and child never share.
    """
    return next(_ids, None) or _more_ids()


def _more_ids() -> str:
    global _ids
    size, width = 16 * _ID_BATCH, len(_ID_ROW)
    bits = int.from_bytes(os.urandom(size), "big") & _ID_KEEP | _ID_SET
    digits = binascii.hexlify(bits.to_bytes(size, "big"))
    rows = bytearray(_ID_ROW * _ID_BATCH)
    for digit, at in _ID_COLUMNS:
        rows[at::width] = digits[digit::32]
    _ids = ids = iter(rows.decode("ascii").split())
    return next(ids)


def _forget_ids() -> None:
    global _ids
    _ids = iter(())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ids)


def publish_chain(innermost: PublishNext, middleware: Sequence[PublishMiddleware]) -> PublishNext:
    """``middleware`` around ``innermost``, the first outermost."""
    chain = innermost
    for layer in reversed(middleware):
        chain = _bind_publish(layer, chain)
    return chain


def batch_chain(innermost: PublishBatchNext, sides: Sequence[PublishSide]) -> PublishBatchNext:
    """The batch halves of ``sides`` around ``innermost``, the first outermost."""
    chain = innermost
    for side in reversed(sides):
        chain = functools.partial(side.batch, call_next=chain)
    return chain


def _bind_publish(middleware: Any, call_next: Any) -> Any:
    """``middleware`` with its ``call_next`` filled in (cheaper to call than a partial)."""

    def layer(envelope: Envelope) -> Any:
        return middleware(envelope, call_next)

    return layer


async def passthrough(envelope: Envelope) -> Envelope:
    """The innermost link of a chain that only prepares envelopes."""
    return envelope
