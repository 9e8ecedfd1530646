"""Where the order flow connects (see ``examples.user_registration.settings`` for the same).

``EVENTBUS_URL`` picks the broker; left unset, each variant runs on an in-memory broker of its
own. ``EVENTBUS_OPTIONS`` (a JSON object) gives the adapter keyword options. ``DATABASE_URL``
picks the database; left unset, a SQLite file per variant in the temporary directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def broker_url(variant: str) -> str:
    return os.environ.get("EVENTBUS_URL", f"memory://order-flow-{variant}")


def broker_options() -> dict[str, Any]:
    """Adapter keyword options from ``EVENTBUS_OPTIONS``, a JSON object (a Redis ``prefix``)."""
    options = json.loads(os.environ.get("EVENTBUS_OPTIONS") or "{}")
    if not isinstance(options, dict):
        raise ValueError(f"EVENTBUS_OPTIONS must be a JSON object, not {options!r}")
    return options


def database_url(variant: str) -> str:
    default = Path(tempfile.gettempdir()) / f"eventbus-order-flow-{variant}.db"
    return os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{default}")


def make_engine(variant: str) -> AsyncEngine:
    url = database_url(variant)
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url, pool_size=5)
