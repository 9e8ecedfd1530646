"""Broker adapters and ``from_url``, which picks one by URL scheme.

Adapters for network brokers import their driver only when asked for; a missing driver is
reported with the ``pip install`` line that brings it. Third-party adapters register a scheme
with :func:`register_broker`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from eventbus.errors import ConfigurationError
from eventbus.redact import redact_url
from eventbus.types import Broker

__all__ = ["from_url", "register_broker", "registered_schemes"]


@dataclasses.dataclass(frozen=True)
class _Entry:
    target: str
    """``"package.module:factory"``; the factory is called as ``factory(url, **options)``."""
    extra: str | None
    """The ``eventbus[extra]`` that installs the driver, or None when nothing is needed."""


_REGISTRY: dict[str, _Entry] = {
    "memory": _Entry("eventbus.brokers.memory:from_url", None),
    "kafka": _Entry("eventbus.brokers.kafka:from_url", "kafka"),
    "redis": _Entry("eventbus.brokers.redis:from_url", "redis"),
    "rediss": _Entry("eventbus.brokers.redis:from_url", "redis"),
    "amqp": _Entry("eventbus.brokers.rabbitmq:from_url", "rabbitmq"),
    "amqps": _Entry("eventbus.brokers.rabbitmq:from_url", "rabbitmq"),
}


def register_broker(scheme: str, target: str, *, extra: str | None = None) -> None:
    """Make ``from_url`` understand ``scheme://`` URLs.

    ``target`` is ``"package.module:factory"``, imported on first use; ``factory(url, **options)``
    returns the adapter. ``extra`` names the pip extra (or package) that provides its driver.
    """
    if ":" not in target:
        raise ConfigurationError(
            f"broker target must look like 'package.module:factory', not {target!r}"
        )
    _REGISTRY[scheme.lower()] = _Entry(target, extra)


def registered_schemes() -> list[str]:
    return sorted(_REGISTRY)


def from_url(url: str, **options: Any) -> Broker:
    """Create the adapter for ``url`` (``memory://``, …), passing ``options`` through untouched."""
    try:
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    except ValueError as exc:  # an unclosed "[" of an IPv6 address
        raise ConfigurationError(
            f"malformed broker URL {redact_url(url)!r} ({exc}); broker URLs look like "
            "scheme://[user:password@]host[:port][/path]"
        ) from exc
    entry = _REGISTRY.get(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s in registered_schemes())
        close = difflib.get_close_matches(scheme, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]}://?" if close else ""
        raise ConfigurationError(
            f"unknown broker URL {redact_url(url)!r}: use one of {known}{hint}"
        )
    module_name, _, factory_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if entry.extra is None or module_name.startswith(exc.name or "\0"):
            raise  # the adapter module itself is missing: a wrong registration, not a driver
        raise ConfigurationError(
            f"the {scheme}:// broker needs a driver that is not installed ({exc.name}); "
            f'run: pip install "eventbus[{entry.extra}]"'
        ) from exc
    factory = getattr(module, factory_name)
    broker: Broker = factory(url, **options)
    return broker


def query_options(url: str) -> dict[str, str]:
    """The ``?name=value`` options of a broker URL."""
    return dict(parse_qsl(urlsplit(url).query))
