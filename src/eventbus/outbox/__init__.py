"""The transactional outbox and inbox: "the user is saved but the event is lost" never happens.

* :class:`Outbox` — the tables; ``EventBus(..., outbox=Outbox())`` makes
  ``bus.publish(event, session=s)`` stage the event in ``s``'s transaction instead of sending it.
* :class:`OutboxRelay` — publishes what committed, at least once, in commit order per key.
* :class:`Inbox` — a middleware that runs a handler once per event, in one transaction with
  its writes and the events it publishes.

Needs ``pip install "eventbus[sql]"`` (SQLAlchemy 2 with aiosqlite or asyncpg); SQLite and
PostgreSQL are supported. See ``docs/outbox.md`` and ``docs/inbox.md``.
"""

from eventbus.errors import ConfigurationError

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        'eventbus.outbox needs SQLAlchemy and a driver: pip install "eventbus[sql]"'
    ) from exc

from eventbus.outbox.deadletters import OutboxDeadLetters
from eventbus.outbox.inbox import Inbox
from eventbus.outbox.relay import OutboxRelay
from eventbus.outbox.store import Backlog, Outbox

__all__ = ["Backlog", "Inbox", "Outbox", "OutboxDeadLetters", "OutboxRelay"]
