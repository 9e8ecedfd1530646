"""What the processes of the outbox benchmark share: the cells, the databases, the brokers.

A *cell* is one database, one broker, one ordering mode and a number of relay processes; its
implementation is eventbus's ``OutboxRelay`` or the hand-written baseline
(:mod:`bench.outbox.baseline`). The events are :class:`bench.common.UserCreated` (about 200
bytes of JSON), staged ``PER_TRANSACTION`` to a transaction over ``KEYS`` partition keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.common import server_url
from eventbus.outbox import Outbox

DATABASES = ("sqlite", "postgresql")
BROKERS = ("memory", "redis", "rabbitmq", "kafka")
ORDERINGS = ("key", "none")
RELAY_COUNTS = (1, 4)
IMPLEMENTATIONS = ("eventbus", "baseline")
BASELINE_BROKERS = ("redis", "kafka")
"""The baseline runs in the target cells only: PostgreSQL, ordered, one relay."""
BATCH_SIZE = 200
"""Rows per claim, for eventbus (``OutboxRelay``'s default) and the baseline alike."""
KEYS = 64
PER_TRANSACTION = 100
REDIS_PREFIX = "bench:"
"""Redis stream names are this plus the destination, as in :mod:`bench.workloads.redis`."""
TARGET_EVENTS_PER_S = 5_000.0
TARGET_BROKERS = ("redis", "kafka")
"""The targets: one ordered relay moves >= TARGET_EVENTS_PER_S from PostgreSQL into these."""


@dataclasses.dataclass(frozen=True)
class Cell:
    db: str
    broker: str
    ordering: str
    relays: int
    impl: str = "eventbus"

    @property
    def name(self) -> str:
        return f"{self.db}/{self.broker}/{self.ordering}/{self.relays}"

    def key(self) -> tuple[str, str, str, int, str]:
        return (self.db, self.broker, self.ordering, self.relays, self.impl)


def has_baseline(db: str, broker: str, ordering: str, relays: int) -> bool:
    return db == "postgresql" and broker in BASELINE_BROKERS and ordering == "key" and relays == 1


def database_url(db: str, directory: Path) -> str:
    """A SQLite file in ``directory``, or the PostgreSQL server of ``scripts/services``."""
    if db == "sqlite":
        return f"sqlite+aiosqlite:///{directory / 'outbox.sqlite3'}"
    if db == "postgresql":
        return server_url("postgres")
    raise ValueError(db)


def make_engine(url: str) -> AsyncEngine:
    """The engine every process of a trial uses (SQLite: the busy timeout the docs advise)."""
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url)


def outbox_for(name: str) -> Outbox:
    """The trial's own tables: ``bench_outbox_<name>`` and ``bench_inbox_<name>``."""
    return Outbox(table=f"bench_outbox_{name}", inbox=f"bench_inbox_{name}")


def pending_left(table: sa.Table) -> sa.Select[Any]:
    """Whether any row is still pending (an index lookup, cheap enough to poll)."""
    return sa.select(sa.exists().where(table.c.state == "pending"))


def broker_url(broker: str) -> str:
    return "memory://" if broker == "memory" else server_url(broker)


def bus_options(broker: str, channel: str) -> dict[str, Any]:
    """How eventbus is pointed at the trial's channel: the stream ``bench:<channel>`` (Redis),
    the exchange ``<channel>`` (RabbitMQ), the topic ``<channel>`` (Kafka)."""
    if broker == "redis":
        return {"prefix": REDIS_PREFIX}
    if broker == "rabbitmq":
        return {"exchange": channel}
    return {}
