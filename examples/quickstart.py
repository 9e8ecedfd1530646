"""A user-registration flow on the embedded default: the in-memory bus and SQLite.

Run it with ``scripts/example`` (or ``python examples/quickstart.py`` once eventbus[sql] is
installed). It prints every step:

1. the auth service publishes ``UserRegistered``;
2. the email service sends a welcome mail — its mail server fails once, the retry policy tries
   again, and the handler publishes ``WelcomeEmailSent`` (caused by the registration);
3. the same event delivered twice is handled once (idempotency, claims kept in SQLite);
4. a mail the provider refuses goes to the dead-letter queue with its reason; once the cause is
   fixed it is replayed, with its event id unchanged;
5. a malformed event is dead-lettered with its original bytes, inspected and purged.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from eventbus import Context, Envelope, Event, EventBus, Middleware, PermanentError, Router
from eventbus.middleware import Idempotency, Retry
from eventbus.middleware.idempotency_sql import SqlIdempotencyStore


class UserRegistered(Event):
    event_type = "auth.user.registered"
    user_id: str
    email: str


class WelcomeEmailSent(Event):
    event_type = "email.welcome.sent"
    user_id: str


def say(text: str) -> None:
    print(f"  {text}", flush=True)


email = Router()
flaky_mail_server = {"failures_left": 1}
blocked_domains = {"blocked.example"}


@email.subscribe(UserRegistered, group="email.welcome")
async def send_welcome(event: UserRegistered, ctx: Context) -> None:
    domain = event.email.rsplit("@", 1)[-1]
    if domain in blocked_domains:
        raise PermanentError(f"the mail provider refuses {domain}")
    if flaky_mail_server["failures_left"]:
        flaky_mail_server["failures_left"] -= 1
        say(f"[email] mail server timed out for {event.email} (attempt {ctx.attempt})")
        raise ConnectionError("mail server timed out")
    say(f"[email] welcome mail sent to {event.email}")
    await ctx.publish(WelcomeEmailSent(user_id=event.user_id), key=event.user_id)


@email.subscribe(WelcomeEmailSent, group="audit.log")
async def audit(event: WelcomeEmailSent, ctx: Context) -> None:
    say(
        f"[audit] {ctx.envelope.type} for {event.user_id}, caused by event "
        f"{ctx.envelope.causationid} (correlation {ctx.envelope.correlationid})"
    )


async def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the story is printed; the logs would repeat it
    database = Path(tempfile.mkdtemp()) / "eventbus-example.sqlite3"
    store = SqlIdempotencyStore(f"sqlite+aiosqlite:///{database}")
    await store.create_table()
    middleware: list[Middleware] = [Retry(tries=3, backoff=0.05, delays=(0.2,)), Idempotency(store)]
    bus = EventBus("memory://", service="auth", routers=[email], middleware=middleware)

    async with bus:
        print("1. auth publishes UserRegistered")
        sent = await bus.publish(UserRegistered(user_id="u-1", email="ada@example.com"), key="u-1")
        say(f"[auth] published {sent.type} id={sent.id}")
        await bus.drain()

        print("2. the same event arrives again (a redelivery after a crash, say)")
        await bus.publish_envelope(sent)
        await bus.drain()
        say("[email] no second mail: the claim in SQLite says it was handled")

        print("3. a user on a domain the mail provider refuses registers")
        await bus.publish(UserRegistered(user_id="u-2", email="bob@blocked.example"))
        await bus.drain()
        [refused] = await bus.dead_letters.list(group="email.welcome")
        say(f"[dlq] {refused.event_id}: {refused.reason}: {refused.error_message}")
        say(f"[dlq] failed in {refused.subscription} after {refused.attempts} attempt(s)")

        print("4. the provider unblocks the domain; an operator replays the dead letter")
        blocked_domains.clear()
        await bus.dead_letters.replay(refused.id)
        await bus.drain()

        print("5. a malformed event (no email address) arrives from a legacy producer")
        payload = b'{"user_id":"u-3"}'
        broken = Envelope(id="broken-1", type="auth.user.registered", source="legacy", data=payload)
        await bus.publish_envelope(broken)
        await bus.drain()
        [record] = await bus.dead_letters.list(group="email.welcome")
        say(f"[dlq] {record.event_id}: {record.error_message.splitlines()[0]}")
        say(f"[dlq] original bytes kept for inspection: {record.body!r}")
        say(f"[dlq] purged {await bus.dead_letters.purge(group='email.welcome')} dead letter(s)")
    await store.close()
    print(f"done: claims kept in {database}")


if __name__ == "__main__":
    asyncio.run(main())
