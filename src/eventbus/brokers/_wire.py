"""What every adapter does alike at its edge."""

from __future__ import annotations

from eventbus.errors import ConfigurationError

__all__ = ["check_max_message_bytes"]


def check_max_message_bytes(value: object) -> int:
    """A positive whole number of bytes, or a :class:`ConfigurationError` naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"max_message_bytes must be a positive whole number of bytes, got {value!r}"
        )
    return value
