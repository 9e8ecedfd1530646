"""What every adapter does alike at its edge."""

from __future__ import annotations

from eventbus.errors import ConfigurationError

__all__ = ["check_max_message_bytes", "whole_number"]


def check_max_message_bytes(value: object) -> int:
    """A positive whole number of bytes, or a :class:`ConfigurationError` naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"max_message_bytes must be a positive whole number of bytes, got {value!r}"
        )
    return value


def whole_number(text: str | None, default: int) -> int:
    """``text`` as a non-negative whole number (ASCII digits only), else ``default``.

    For the adapter's own headers (attempts, due times): whatever a foreign producer put
    there, reading it never fails.
    """
    if text and text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return default
