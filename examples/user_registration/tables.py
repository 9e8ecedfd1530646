"""Each service's own tables (one database here, see ``settings``)."""

from __future__ import annotations

import sqlalchemy as sa

from examples.user_registration.settings import claims, engine, outbox, request_keys

metadata = sa.MetaData()

users = sa.Table(  # the auth service's
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
)

welcome_mails = sa.Table(  # the e-mail service's: one row per welcome mail handed to the provider
    "welcome_mails",
    metadata,
    sa.Column("user_id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("provider_message_id", sa.String(64), nullable=False),
)

signups = sa.Table(  # the analytics service's: registrations per e-mail domain
    "signups_by_domain",
    metadata,
    sa.Column("domain", sa.String(255), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

contacts = sa.Table(  # the CRM service's
    "crm_contacts",
    metadata,
    sa.Column("user_id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
)


async def drop_tables() -> None:
    """Every table ``create_tables`` makes, gone: a demo run starts from nothing."""
    async with engine.begin() as connection:
        for tables in (
            metadata,
            outbox.metadata,
            claims.table.metadata,
            request_keys.table.metadata,
        ):
            await connection.run_sync(tables.drop_all)


async def create_tables() -> None:
    """The services' tables, the outbox and inbox tables, the claims table (idempotent)."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    await outbox.create_tables(engine)
    await claims.create_table()
    await request_keys.create_table()


if __name__ == "__main__":  # ``python -m examples.user_registration.tables``
    import asyncio

    asyncio.run(create_tables())
