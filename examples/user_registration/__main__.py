"""Run the whole user-registration flow in one process: ``python -m examples.user_registration``.

Every service runs here, on the in-memory broker ``memory://user-registration`` and SQLite
(or the ``EVENTBUS_URL`` and ``DATABASE_URL`` of ``settings``). The run prints a timeline:

1. two users register through ``POST /users``; each user row and its ``UserRegistered`` commit
   together, and the outbox relay publishes the event; a client's retry with the same
   ``Idempotency-Key`` gets the first response back;
2. the e-mail, analytics and CRM services each get every event (three consumer groups); the mail
   provider is down for the first mail, so the retry policy tries again;
3. the second user's plus-address is refused by the e-mail service: dead-lettered at once;
4. the first registration's event arrives a second time (as after a relay crash): no second
   mail, no second count;
5. an operator lists the dead letter, deploys the fix and replays it: the mail goes out;
6. what each service stored, and the trace of the first registration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from contextlib import AsyncExitStack

import httpx
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import Envelope
from eventbus.testing import published
from examples.quiet import until_quiet
from examples.timeline import say
from examples.user_registration import (
    analytics_service,
    auth_service,
    crm_service,
    email_service,
)
from examples.user_registration.events import UserRegistered
from examples.user_registration.settings import engine, outbox
from examples.user_registration.tables import (
    contacts,
    create_tables,
    drop_tables,
    signups,
    users,
    welcome_mails,
)
from examples.user_registration.tracetree import flow_root, print_trace_tree

CONSUMERS = [email_service.bus, analytics_service.bus, crm_service.bus]


async def quiet() -> None:
    await until_quiet(email_service.bus, outbox, engine)  # the services share one broker


async def register(client: httpx.AsyncClient, email: str, name: str, key: str) -> httpx.Response:
    """``POST /users`` as a careful client sends it: with an ``Idempotency-Key``, kept for
    its retries."""
    body = {"email": email, "name": name}
    response = await client.post("/users", json=body, headers={"Idempotency-Key": key})
    return response.raise_for_status()


async def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the timeline tells the story
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    await drop_tables()  # a fresh run: the example's own tables, on SQLite or PostgreSQL
    await create_tables()

    async with AsyncExitStack() as stack:
        for bus in CONSUMERS:
            await stack.enter_async_context(bus)
        app = auth_service.app
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://auth")
        )

        print("1. two users register; 2. three services react; 3. one address is refused")
        first = await register(client, "ada@example.com", "Ada", key=str(uuid.uuid4()))
        ada = first.json()
        await register(client, "grace+news@example.com", "Grace", key=str(uuid.uuid4()))
        await quiet()

        print("   Ada's app timed out and sends her request again, with the same key")
        key = first.request.headers["Idempotency-Key"]
        again = await register(client, "ada@example.com", "Ada", key=key)
        replayed = again.headers.get("Idempotent-Replayed") == "true"
        assert replayed
        assert again.json() == ada
        say("auth", "the same key: the first response, replayed; nobody registered twice")

        print("4. Ada's event is delivered a second time (as after a relay crash)")
        await auth_service.bus.publish_envelope(_event_of(ada["id"]))
        await quiet()
        await _report_duplicates()

        print("5. an operator looks at the dead-letter queue, deploys the fix, replays")
        [dead] = await email_service.bus.dead_letters.list(group=email_service.GROUP)
        say("operator", f"dead letter {dead.id[:8]}: {dead.reason}: {dead.error_message}")
        email_service.accepts_plus_addresses = True
        say("operator", "the e-mail service now accepts plus-addresses; replaying")
        await email_service.bus.dead_letters.replay(dead.id)
        await quiet()

    print("6. what the services stored")
    async with engine.connect() as connection:
        for table in (users, welcome_mails, signups, contacts):
            rows = (await connection.execute(sa.select(table))).all()
            print(f"  {table.name}: {len(rows)} row(s)")
            for row in rows:
                print(f"    {tuple(row)}")
    print("the trace of Ada's registration:")
    finished = spans.get_finished_spans()
    print_trace_tree(finished, flow_root(finished, _event_of(ada["id"]).id))
    await engine.dispose()


def _event_of(user_id: str) -> Envelope:
    """The UserRegistered published for ``user_id`` (from the memory broker's record)."""
    sent = published(auth_service.bus, UserRegistered)
    return next(e for e in sent if json.loads(e.data)["user_id"] == user_id)


async def _report_duplicates() -> None:
    async with engine.connect() as connection:
        mails = await connection.scalar(sa.select(sa.func.count()).select_from(welcome_mails))
        count = await connection.scalar(sa.select(signups.c.count))
    say("email", f"no second mail: the inbox had the event ({mails} welcome mail in all)")
    say("analytics", f"not counted twice: its claim was there (sign-ups: {count})")


if __name__ == "__main__":
    asyncio.run(main())
