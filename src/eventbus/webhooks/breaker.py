"""A circuit breaker per endpoint: a dead endpoint is left alone instead of tried in a loop.

After ``failures`` attempts in a row that found the endpoint failing (5xx, timeouts, refused
connections), its circuit *opens*: none of its deliveries are attempted for ``cooldown``
seconds (they stay due in the table, nothing is counted against them). Then one attempt is
let through (*half-open*): a success closes the circuit, a failure opens it again for twice as
long, up to ``max_cooldown``. A 429 pauses the endpoint for its ``Retry-After``, however
healthy it is. Any answer that is not a failure of the endpoint (2xx, a 4xx) closes it.

The state is the sending process's own (two senders each learn it on their own); every other
endpoint's deliveries go on meanwhile.
"""

from __future__ import annotations

import dataclasses

from eventbus.errors import ConfigurationError

__all__ = ["CircuitBreaker"]


@dataclasses.dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0
    cooldown: float = 0.0


class CircuitBreaker:
    def __init__(
        self, *, failures: int = 5, cooldown: float = 30.0, max_cooldown: float = 600.0
    ) -> None:
        if failures < 1 or cooldown <= 0 or max_cooldown < cooldown:
            raise ConfigurationError(
                "CircuitBreaker needs failures >= 1 and 0 < cooldown <= max_cooldown"
            )
        self.failures, self.cooldown, self.max_cooldown = failures, cooldown, max_cooldown
        self._states: dict[str, _State] = {}

    def capacity(self, endpoint_id: str, now: float, concurrency: int) -> int:
        """How many attempts the endpoint may have in flight now: all of them when closed,
        none while open, one probe when the cooldown is over."""
        state = self._states.get(endpoint_id)
        if state is None or (state.failures < self.failures and state.open_until <= now):
            return concurrency
        if state.open_until > now:
            return 0
        return 1

    def is_open(self, endpoint_id: str, now: float) -> bool:
        state = self._states.get(endpoint_id)
        return state is not None and state.open_until > now

    def succeeded(self, endpoint_id: str) -> None:
        self._states.pop(endpoint_id, None)

    def failed(self, endpoint_id: str, now: float) -> None:
        state = self._states.setdefault(endpoint_id, _State())
        state.failures += 1
        if state.failures >= self.failures:
            state.cooldown = min(self.max_cooldown, state.cooldown * 2 or self.cooldown)
            state.open_until = now + state.cooldown

    def pause(self, endpoint_id: str, until: float) -> None:
        """Attempt nothing of the endpoint before ``until`` (a 429's ``Retry-After``)."""
        state = self._states.setdefault(endpoint_id, _State())
        state.open_until = max(state.open_until, until)
