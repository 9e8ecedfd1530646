"""The analytics service: counts registrations per e-mail domain.

A counter is the textbook effect that must not run twice: the ``Idempotency`` middleware keeps
a claim per (group, event id) in SQL and skips an event its group has handled already.

Run it on its own with ``eventbus worker run examples.user_registration.analytics_service:bus``.
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from eventbus import Context, Router
from eventbus.middleware import Idempotency
from examples.timeline import say
from examples.user_registration.events import UserRegistered
from examples.user_registration.settings import claims, engine, service_bus
from examples.user_registration.tables import signups

router = Router()


@router.subscribe(UserRegistered, group="analytics.signups", middleware=[Idempotency(claims)])
async def count_signup(event: UserRegistered, ctx: Context) -> None:
    domain = event.email.rpartition("@")[2].lower()
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    async with engine.begin() as connection:
        await connection.execute(
            insert(signups)
            .values(domain=domain, count=1)
            .on_conflict_do_update(
                index_elements=[signups.c.domain], set_={"count": signups.c.count + 1}
            )
        )
    say("analytics", f"counted a sign-up from {domain}", ctx)


bus = service_bus("analytics", [router])
