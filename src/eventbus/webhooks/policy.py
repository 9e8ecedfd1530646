"""What an attempt's answer means, and when to try again.

* **2xx** — delivered.
* **410 Gone** — the receiver says the endpoint is gone: the delivery is dead and the endpoint
  is disabled (its other deliveries wait until it is enabled again).
* **408, 429** — try again, after ``Retry-After`` when the answer has one (seconds or an HTTP
  date, at most :data:`MAX_RETRY_AFTER`), else on the schedule. A 429 also pauses the whole
  endpoint for that long.
* **other 4xx** — final: the receiver refuses this request and would refuse it again; the
  delivery is dead (see the dead-letter tools).
* **3xx, 5xx, a timeout, a connection error** — try again on the schedule (redirects are not
  followed: they count as failures).
* **an address the guard refuses** — final.

The schedule is the Standard Webhooks one — immediately, then 5 s, 5 min, 30 min, 2 h, 5 h,
10 h, 14 h, 20 h and 24 h after the previous attempt (ten attempts over about 75 hours) — each
delay spread by ``±jitter`` (a fraction) so that the retries of many deliveries that failed
together do not all arrive together. After the last attempt the delivery is dead.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime

from eventbus.errors import ConfigurationError

__all__ = [
    "DEFAULT_DELAYS",
    "MAX_RETRY_AFTER",
    "Outcome",
    "RetrySchedule",
    "Verdict",
    "judge",
    "retry_after",
]

DEFAULT_DELAYS = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
MAX_RETRY_AFTER = 86400.0
"""A ``Retry-After`` longer than a day is read as a day."""


class Outcome(str, enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FINAL = "final"
    """Refused for good: the delivery is dead at once."""
    GONE = "gone"
    """410: the delivery is dead and the endpoint disabled."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    retry_after: float | None = None
    """The receiver's ``Retry-After``, in seconds (408 and 429 only)."""
    throttled: bool = False
    """A 429: the whole endpoint pauses for ``retry_after`` (or the next delay)."""


@dataclasses.dataclass(frozen=True)
class RetrySchedule:
    """``delays[0]`` is when the first attempt goes (0: at once); ``delays[n]`` how long after
    attempt ``n`` fails the next one goes. ``len(delays)`` is the number of attempts."""

    delays: Sequence[float] = DEFAULT_DELAYS
    jitter: float = 0.1
    random: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        delays = tuple(float(d) for d in self.delays)
        if not delays or any(d < 0 for d in delays):
            raise ConfigurationError("RetrySchedule(delays=...) needs at least one delay >= 0")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("RetrySchedule(jitter=...) is a fraction in [0, 1)")
        object.__setattr__(self, "delays", delays)

    @property
    def attempts(self) -> int:
        return len(self.delays)

    @property
    def horizon(self) -> float:
        """The longest time from the first attempt to the last (every delay at its maximum)."""
        return sum(self.delays[1:]) * (1 + self.jitter)

    def next_delay(self, attempts_made: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` failed ones; ``None`` when
        that was the last. A receiver's ``Retry-After`` takes the place of the schedule's."""
        if attempts_made >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after
        base = self.delays[attempts_made]
        return base * (1 + self.jitter * (2 * self.random() - 1))


def judge(status: int) -> Verdict:
    """What an HTTP status means for the delivery (``Retry-After`` is read separately)."""
    if 200 <= status < 300:
        return Verdict(Outcome.DELIVERED)
    if status == 410:
        return Verdict(Outcome.GONE)
    if status in (408, 429):
        return Verdict(Outcome.RETRY, throttled=status == 429)
    if 400 <= status < 500:
        return Verdict(Outcome.FINAL)
    return Verdict(Outcome.RETRY)


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` in seconds from ``now`` (delta-seconds or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER`; ``None`` when absent or unreadable."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return min(max(0.0, moment.timestamp() - now), MAX_RETRY_AFTER)
