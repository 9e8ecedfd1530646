"""Where the order flow connects (see ``examples.user_registration.settings`` for the same).

``EVENTBUS_URL`` picks the broker; left unset, each variant runs on an in-memory broker of its
own. ``DATABASE_URL`` picks the database; left unset, a SQLite file per variant in the
temporary directory. Each run starts from empty tables.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def broker_url(variant: str) -> str:
    return os.environ.get("EVENTBUS_URL", f"memory://order-flow-{variant}")


def database_url(variant: str) -> str:
    default = Path(tempfile.gettempdir()) / f"eventbus-order-flow-{variant}.db"
    return os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{default}")


async def fresh_engine(variant: str) -> AsyncEngine:
    """The variant's database, emptied: a run starts from nothing."""
    url = database_url(variant)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
    else:
        engine = create_async_engine(url, pool_size=5)
    metadata = sa.MetaData()
    async with engine.begin() as connection:
        await connection.run_sync(metadata.reflect)
        await connection.run_sync(metadata.drop_all)
    return engine
