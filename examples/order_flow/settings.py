"""Where the order flow connects (``examples.connections``: ``EVENTBUS_URL``,
``EVENTBUS_OPTIONS``, ``DATABASE_URL``). Left unset, each variant runs on an in-memory broker
of its own, with a SQLite file of its own.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from examples import connections
from examples.connections import broker_options

__all__ = ["broker_options", "broker_url", "make_engine"]


def broker_url(variant: str) -> str:
    return connections.broker_url(f"memory://order-flow-{variant}")


def make_engine(variant: str) -> AsyncEngine:
    return connections.make_engine(connections.database_url(f"eventbus-order-flow-{variant}.db"))
