"""Where the services connect: one URL for the broker, one for the database.

``EVENTBUS_URL`` picks the broker (``redis://…``, ``amqp://…``, ``kafka://…``); left unset,
every service of this process shares the in-memory broker ``memory://user-registration``.
``EVENTBUS_OPTIONS`` (a JSON object) gives the adapter keyword options, such as a Redis key
``prefix`` to share one server between several apps. ``DATABASE_URL`` picks the database
(``postgresql+asyncpg://…``); left unset, a SQLite file in the temporary directory. In a real
deployment each service would own its database; here they share one, each with tables of its
own, so that a run needs a single URL.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus.middleware.idempotency_sql import SqlIdempotencyStore
from eventbus.outbox import Outbox

SQLITE_FILE = Path(tempfile.gettempdir()) / "eventbus-user-registration.db"


def broker_url() -> str:
    return os.environ.get("EVENTBUS_URL", "memory://user-registration")


def broker_options() -> dict[str, Any]:
    options = json.loads(os.environ.get("EVENTBUS_OPTIONS") or "{}")
    if not isinstance(options, dict):
        raise ValueError(f"EVENTBUS_OPTIONS must be a JSON object, not {options!r}")
    return options


def database_url() -> str:
    return os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{SQLITE_FILE}")


def make_engine() -> AsyncEngine:
    url = database_url()
    if url.startswith("sqlite"):
        # One writer at a time: wait for the lock instead of failing with "database is locked".
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url, pool_size=5)


engine = make_engine()
outbox = Outbox()
"""The outbox and inbox tables (``eventbus_outbox``, ``eventbus_inbox``) of this database."""
claims = SqlIdempotencyStore(engine)
"""The analytics service's idempotency claims (``eventbus_idempotency``)."""
request_keys = SqlIdempotencyStore(engine, table="auth_request_keys")
"""The auth service's ``Idempotency-Key`` responses, kept 24 hours."""
