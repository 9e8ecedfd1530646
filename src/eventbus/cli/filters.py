"""Choosing dead letters: by group, error type, event type and time (``--since``)."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone

import click

from eventbus.deadletters import DeadLetterRecord

__all__ = ["Filter", "parse_since"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO-8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    now = now or datetime.now(timezone.utc)
    found = _DURATION.match(text.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: float(found.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30s, 15m, 2h, 7d, 1w) nor an ISO-8601 time "
            "(2026-05-01T12:00:00+00:00)",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which dead letters a command works on; an empty filter takes every one."""

    group: str | None = None
    error_type: str | None = None
    event_type: str | None = None
    since: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.group or self.error_type or self.event_type or self.since)

    def __call__(self, record: DeadLetterRecord) -> bool:
        if self.group is not None and record.group != self.group:
            return False
        if self.error_type is not None and not _same_error(record.error_type, self.error_type):
            return False
        if self.event_type is not None and record.event_type != self.event_type:
            return False
        if self.since is not None:
            when = record.last_failure_at or record.first_failure_at
            if when is None or _aware(when) < self.since:
                return False
        return True


def _same_error(recorded: str, wanted: str) -> bool:
    """``ValueError`` matches ``builtins.ValueError`` and ``app.errors.ValueError`` alike."""
    return recorded == wanted or recorded.rsplit(".", 1)[-1] == wanted


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
