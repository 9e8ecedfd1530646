"""Where the services connect (``examples.connections``: ``EVENTBUS_URL``,
``EVENTBUS_OPTIONS``, ``DATABASE_URL``), and the bus every service builds the same way.

Left unset, every service of this process shares the in-memory broker
``memory://user-registration`` and one SQLite file. In a real deployment each service would own
its database; here they share one, each with tables of its own, so that a run needs a single URL.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventbus import EventBus, Router
from eventbus.middleware import default_middleware
from eventbus.middleware.idempotency_sql import SqlIdempotencyStore
from eventbus.otel import Tracing
from eventbus.outbox import Outbox
from examples.connections import broker_options, broker_url, database_url, make_engine

engine = make_engine(database_url("eventbus-user-registration.db"))
outbox = Outbox()
"""The outbox and inbox tables (``eventbus_outbox``, ``eventbus_inbox``) of this database."""
claims = SqlIdempotencyStore(engine)
"""The analytics service's idempotency claims (``eventbus_idempotency``)."""
request_keys = SqlIdempotencyStore(engine, table="auth_request_keys")
"""The auth service's ``Idempotency-Key`` responses, kept 24 hours."""


def service_bus(
    service: str, routers: Sequence[Router] = (), *, with_outbox: bool = False
) -> EventBus:
    """A service's bus: traced, with the default retry policy, and the outbox if it stages
    events (the auth service's publishes, the e-mail service's inbox)."""
    return EventBus(
        broker_url("memory://user-registration"),
        service=service,
        routers=routers,
        middleware=[Tracing(), *default_middleware()],
        outbox=outbox if with_outbox else None,
        **broker_options(),
    )
