"""The CRM service: keeps a contact per user.

Its effect is idempotent by nature: an upsert keyed by the user id gives the same row however
often it runs, so this handler needs neither the inbox nor claims.

Run it on its own with ``eventbus worker run examples.user_registration.crm_service:bus``.
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from eventbus import Context, Router
from examples.timeline import say
from examples.user_registration.events import UserRegistered
from examples.user_registration.settings import engine, service_bus
from examples.user_registration.tables import contacts

router = Router()


@router.subscribe(UserRegistered, group="crm.contacts")
async def upsert_contact(event: UserRegistered, ctx: Context) -> None:
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    row = {"user_id": event.user_id, "email": event.email, "name": event.name}
    async with engine.begin() as connection:
        await connection.execute(
            insert(contacts)
            .values(**row)
            .on_conflict_do_update(index_elements=[contacts.c.user_id], set_=row)
        )
    say("crm", f"contact for {event.name} up to date", ctx)


bus = service_bus("crm", [router])
