"""Turning an ``Event`` into the ``Envelope`` that is published: ids, JSON, causation, headers.

Everything here happens before the broker is involved, so a payload that cannot travel fails
the publish with :class:`~eventbus.errors.PublishError` and nothing is sent.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
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
    "encode",
    "new_event_id",
    "passthrough",
    "publish_chain",
]

_UTC = timezone.utc
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
        data = encode(event)
        event_id = new_event_id()
        parent = current_envelope.get()
        if correlation_id is not None:
            _check_correlation_id(correlation_id)
        elif parent is not None:
            correlation_id = parent.correlationid or parent.id
        return new_envelope(
            id=event_id,
            type=event_type,
            source=self.service,
            data=data,
            time=datetime.now(_UTC),
            subject=subject,
            partitionkey=None if key is None else str(key),
            correlationid=correlation_id or event_id,
            causationid=parent.id if parent else None,
            dataversion=event_version,
            extensions=self._check_headers(headers) if headers else _NO_EXTENSIONS,
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


def encode(event: Event) -> bytes:
    """The event as JSON; refuses what JSON cannot carry (PublishError, nothing sent).

    ``Event`` writes NaN and infinities as the bare constants ``NaN``/``Infinity`` (not JSON),
    so a payload is only parsed again in the rare case those letters occur in it (looking for
    the bytes ``N`` and ``I`` first: a search for one byte is a ``memchr``, several times
    cheaper than a search for a word).
    """
    try:
        data = event.__pydantic_serializer__.to_json(event)
    except PydanticSerializationError as exc:
        raise PublishError(
            f"cannot encode {type(event).__name__} as JSON: {exc}; nothing was sent"
        ) from exc
    if (_N in data or _I in data) and (b"NaN" in data or b"Infinity" in data):
        try:
            json.loads(data, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise PublishError(
                f"cannot encode {type(event).__name__} as JSON: {exc}; nothing was sent. To "
                "send NaN and infinities on purpose, give the event model_config = "
                "ConfigDict(ser_json_inf_nan='strings'): they travel as the strings 'NaN', "
                "'Infinity' and '-Infinity' and validate back into floats"
            ) from None
    return data


_N, _I = ord("N"), ord("I")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"a float is {name}, which JSON cannot represent")


def _check_correlation_id(value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ConfigurationError(
            f"correlation_id must be a non-empty string of at most 256 characters, got {value!r}"
        )


class _EventIds:
    """Random (version 4) UUIDs as text, made 128 at a time from one ``os.urandom`` read.

    The version and variant bits of all 128 are set with one mask over the read, and the ids
    are formatted in one comprehension, so handing one out is taking the next of a list. The
    ids made are dropped in a forked child, so parent and child never hand out the same ids.
    """

    _BATCH = 128
    _KEEP = int.from_bytes(bytes.fromhex("ffffffffffff0fff3fffffffffffffff") * _BATCH, "big")
    _SET = int.from_bytes(bytes.fromhex("00000000000040008000000000000000") * _BATCH, "big")

    def __init__(self) -> None:
        self._ids: Iterator[str] = iter(())

    def reset(self) -> None:
        self._ids = iter(())

    def __call__(self) -> str:
        for event_id in self._ids:
            return event_id
        size = 16 * self._BATCH
        bits = int.from_bytes(os.urandom(size), "big") & self._KEEP | self._SET
        h = bits.to_bytes(size, "big").hex()
        self._ids = iter(
            [
                f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-"
                f"{h[i + 20 : i + 32]}"
                for i in range(0, 2 * size, 32)
            ]
        )
        return next(self._ids)


new_event_id = _EventIds()
"""A fresh event id: a random (version 4) UUID as text."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_event_id.reset)


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
