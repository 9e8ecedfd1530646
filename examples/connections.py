"""Where the example apps connect, read from the environment; shared by both apps.

``EVENTBUS_URL`` picks the broker (``redis://…``, ``amqp://…``, ``kafka://…``); left unset, an
app uses the in-memory broker it names. ``EVENTBUS_OPTIONS`` (a JSON object) gives the adapter
keyword options, such as a Redis key ``prefix`` to share one server between several apps.
``DATABASE_URL`` picks the database (``postgresql+asyncpg://…``); left unset, an app uses a
SQLite file of its own in the temporary directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def broker_url(default: str) -> str:
    return os.environ.get("EVENTBUS_URL", default)


def broker_options() -> dict[str, Any]:
    options = json.loads(os.environ.get("EVENTBUS_OPTIONS") or "{}")
    if not isinstance(options, dict):
        raise ValueError(f"EVENTBUS_OPTIONS must be a JSON object, not {options!r}")
    return options


def database_url(sqlite_name: str) -> str:
    """``DATABASE_URL``, or the SQLite file ``sqlite_name`` in the temporary directory."""
    default = Path(tempfile.gettempdir()) / sqlite_name
    return os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{default}")


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # One writer at a time: wait for the lock instead of failing with "database is locked".
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url, pool_size=5)
