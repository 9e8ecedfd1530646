"""What every adapter does alike at its edge: carried headers, text, driver errors, limits.

**Carried headers.** A network adapter that sends a message on again (a redelivery, a
delayed retry) writes the delivery's attempt and ``metadata`` as ``eventbus-*`` headers next
to the message's own, and reads them back on delivery: :func:`carried_headers`,
:func:`read_carried`, :func:`without_carried`. ``eventbus-dlq-*`` (dead-letter provenance,
:mod:`eventbus.deadletters`) is never metadata.

**Driver errors.** Each adapter maps its driver's exceptions to :mod:`eventbus.errors` with
one function of its own (``translate(exc, what)``); :class:`DriverErrors` is the one shape in
which that mapping is applied, as a context manager around every driver call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from eventbus.deadletters import DLQ_PREFIX
from eventbus.errors import ConfigurationError, EventBusError

__all__ = [
    "hosts_of",
    "ATTEMPT",
    "CARRIED_PREFIX",
    "DESTINATION",
    "DUE",
    "Carried",
    "DriverErrors",
    "carried_headers",
    "check_max_message_bytes",
    "read_carried",
    "text",
    "whole_number",
    "without_carried",
]

CARRIED_PREFIX = "eventbus-"
ATTEMPT = "eventbus-attempt"
"""The delivery attempt of a copy sent on again (1 when absent)."""
DESTINATION = "eventbus-destination"
"""The destination the original was published to, on a copy sent to one group's retry route."""
DUE = "eventbus-due"
"""When a delayed copy is due, in epoch milliseconds (where the broker cannot delay itself)."""
_OWN = frozenset((ATTEMPT, DESTINATION, DUE))


def text(value: Any) -> str:
    """A header value as text, for the adapter's own headers: never raises (bad bytes are
    replaced). The CloudEvents attributes are read strictly by :mod:`eventbus.envelope`."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def whole_number(value: str | None, default: int) -> int:
    """``value`` as a non-negative whole number (ASCII digits only), else ``default``.

    For the adapter's own headers (attempts, due times): whatever a foreign producer put
    there, reading it never fails.
    """
    if value and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    return default


class Carried(NamedTuple):
    """What an adapter's own headers say about a delivery."""

    attempt: int | None
    """The attempt written on a copy, or None when the message is an original."""
    metadata: dict[str, str]
    destination: str | None
    due_ms: int | None


_new_carried = tuple.__new__


def carried_headers(
    attempt: int, metadata: Mapping[str, str], **more: str | None
) -> dict[str, str]:
    """The ``eventbus-*`` headers of a copy with ``attempt`` and ``metadata``.

    ``more`` adds the adapter's own: ``destination=...`` and ``due=...`` (epoch ms).
    """
    headers = {CARRIED_PREFIX + key: value for key, value in metadata.items()}
    headers[ATTEMPT] = str(attempt)
    for name, value in more.items():
        if value is not None:
            headers[CARRIED_PREFIX + name] = value
    return headers


def read_carried(headers: Mapping[str, Any]) -> Carried:
    """The attempt, metadata and routing an earlier copy of this message carried.

    Every copy an adapter sends on carries ``eventbus-attempt`` (:func:`carried_headers`), so
    a message without it is an original and its headers are not looked through."""
    if ATTEMPT not in headers:  # tuple.__new__: a NamedTuple's own __new__ costs twice as much
        return _new_carried(Carried, (None, {}, None, None))
    attempt: int | None = None
    destination: str | None = None
    due: int | None = None
    metadata: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not name.startswith(CARRIED_PREFIX) or value is None:
            continue  # a null header value (Kafka allows them) is an absent one
        if name == ATTEMPT:
            attempt = max(1, whole_number(text(value), 1))
        elif name == DESTINATION:
            destination = text(value) or None
        elif name == DUE:
            due = whole_number(text(value), 0)
        elif not name.startswith(DLQ_PREFIX):
            metadata[name[len(CARRIED_PREFIX) :]] = text(value)
    return Carried(attempt, metadata, destination, due)


def without_carried(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The message's own headers: every ``eventbus-*`` one (carried, provenance) removed."""
    return {k: v for k, v in headers.items() if not str(k).startswith(CARRIED_PREFIX)}


Translate = Callable[[Exception, str], EventBusError | None]
"""An adapter's mapping of a driver exception (and what was being done) to an eventbus error;
``None`` lets the exception through unchanged."""


class DriverErrors:
    """``with errors("publish to 'x'"):`` maps a driver exception raised inside the block.

    Built once per adapter from its ``translate`` function; errors of eventbus itself and
    cancellations pass through untouched.
    """

    __slots__ = ("_translate",)

    def __init__(self, translate: Translate) -> None:
        self._translate = translate

    def __call__(self, what: str) -> _Edge:
        return _Edge(self._translate, what)

    def error(self, exc: Exception, what: str) -> EventBusError | None:
        """The mapped error for ``exc``, for a hot path that catches it itself."""
        if isinstance(exc, EventBusError):
            return None
        return self._translate(exc, what)


class _Edge:
    __slots__ = ("_translate", "_what")

    def __init__(self, translate: Translate, what: str) -> None:
        self._translate, self._what = translate, what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, EventBusError):
            return
        error = self._translate(exc, self._what)
        if error is not None:
            raise error from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def check_max_message_bytes(value: object) -> int:
    """A positive whole number of bytes, or a :class:`ConfigurationError` naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"max_message_bytes must be a positive whole number of bytes, got {value!r}"
        )
    return value


def hosts_of(url: str, default_port: int) -> tuple[str, ...]:
    """``host:port`` of each server a broker URL names, never its user information."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    hosts = tuple(
        host if re.search(r":\d+$", host) else f"{host}:{default_port}"
        for host in netloc.split(",")
        if host
    )
    return hosts or (f"localhost:{default_port}",)
