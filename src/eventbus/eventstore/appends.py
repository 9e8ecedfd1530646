"""What every store does alike on an append: the envelopes, and the one decision on them.

The decision (:func:`decide`) is made here once, for the SQL store and the in-memory one, from
what the store read: the stream's current version and where any of the appended event ids are
stored already. Either the append is a retry of one that committed (its events sit, in order,
at the versions right after ``expected_version``: the answer is the version it produced, and
nothing is written), or it conflicts (:class:`~eventbus.errors.ConcurrencyError`), or it is
written after the current version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventbus.envelope import Envelope
from eventbus.errors import ConcurrencyError, ConfigurationError
from eventbus.event import Event
from eventbus.publishing import EnvelopeFactory

__all__ = ["Envelopes", "check_expected", "check_stream_id", "decide", "publish_needs"]

_NO_SIZE_LIMIT = 2**62  # a store is not a broker: no message size to check


def check_stream_id(stream_id: object) -> str:
    if not isinstance(stream_id, str) or not stream_id or len(stream_id) > 255:
        raise ConfigurationError(
            f"a stream id is a non-empty string of at most 255 characters, got {stream_id!r:.80}"
        )
    return stream_id


def check_expected(expected_version: object) -> int | None:
    if expected_version is None:
        return None
    if type(expected_version) is not int or expected_version < 0:
        raise ConfigurationError(
            "expected_version is the number of events the stream holds now (0: it must not "
            f"exist yet), or None for any; got {expected_version!r}"
        )
    return expected_version


class Envelopes:
    """The envelopes of an append: an ``Event`` gets one as ``bus.publish`` would build it
    (a fresh id, the time, ``source`` = ``service``, correlation and causation from the event
    being handled, if any) with the stream id as its partition key; an ``Envelope`` is kept
    as it is, id and all."""

    def __init__(self, service: str) -> None:
        if not service or not isinstance(service, str):
            raise ConfigurationError("service must be a non-empty name, such as 'billing'")
        self._factory = EnvelopeFactory(service, _NO_SIZE_LIMIT)

    def __call__(self, stream_id: str, events: Sequence[Event | Envelope]) -> list[Envelope]:
        if isinstance(events, (Event, Envelope)):
            raise ConfigurationError("append() takes a list of events; wrap the one in [...]")
        out: list[Envelope] = []
        for item in events:
            if isinstance(item, Envelope):
                out.append(item)
            elif isinstance(item, Event):
                out.append(self._factory(item, key=stream_id))
            else:
                raise ConfigurationError(
                    f"append() takes Event models or Envelopes, not {type(item).__name__}"
                )
        if len({envelope.id for envelope in out}) < len(out):
            raise ConfigurationError("an append holds the same event id twice; ids are unique")
        return out

    def messages(self, envelopes: Sequence[Envelope]) -> list[tuple[str, Envelope]]:
        """``(destination, envelope)`` for publishing what was appended: where events of the
        envelope's type go, as the bus sends them (the class's topic; else the type)."""
        return [(self._factory.destination(envelope), envelope) for envelope in envelopes]


def publish_needs(where: object, what: str) -> None:
    """Refuse ``append(publish=True)`` on a store that has nowhere to publish to."""
    if where is None:
        raise ConfigurationError(f"append(publish=True) needs {what}")


def decide(
    stream_id: str,
    expected: int | None,
    current: int,
    envelopes: Sequence[Envelope],
    stored: Mapping[str, tuple[str, int]],
) -> int | None:
    """The version an append results in without writing (it is a retry), or None: write the
    envelopes as versions ``current + 1`` …; raises ``ConcurrencyError`` when it may not.

    ``stored`` says where the envelopes' ids already are: ``{id: (stream_id, version)}``.
    """
    if stored:
        first = stored.get(envelopes[0].id)
        if first is not None and first[0] == stream_id:
            start = first[1] - 1
            in_place = all(
                stored.get(envelope.id) == (stream_id, start + i)
                for i, envelope in enumerate(envelopes, 1)
            )
            if in_place and (expected is None or expected == start):
                return start + len(envelopes)
        event_id = next(e.id for e in envelopes if e.id in stored)
        where, version = stored[event_id]
        raise ConcurrencyError(
            stream_id,
            expected,
            current,
            f"event {event_id!r} is stored already, as version {version} of stream {where!r}",
        )
    if expected is not None and expected != current:
        raise ConcurrencyError(stream_id, expected, current)
    return None
