"""The e-mail service: one welcome mail per registration, never two.

* **Exactly once.** The ``Inbox`` runs the handler in a transaction that also records
  (group, event id): the ``welcome_mails`` row and that record commit together, so a
  redelivered event finds its record and is acked without running again. The mail itself
  leaves the database, so it is sent with the event id as the provider's idempotency key.
* **A transient failure** (the provider answers 503) raises; the bus's ``Retry`` tries again
  with backoff, and every try gets a fresh transaction.
* **An address the service refuses** raises ``PermanentError``: retrying cannot help, so the
  event goes to the dead-letter queue at once, with the reason, for an operator to look at.
  This version refuses plus-addresses (``ada+news@…``), a rule the operator later lifts
  (``accepts_plus_addresses``, or ``EMAIL_ACCEPTS_PLUS_ADDRESSES=1``) before replaying.

Run it on its own with ``eventbus worker run examples.user_registration.email_service:bus``.
"""

from __future__ import annotations

import os

from eventbus import Context, PermanentError, Router
from eventbus.middleware import current_try
from eventbus.outbox import Inbox
from examples.timeline import say
from examples.user_registration.events import UserRegistered
from examples.user_registration.mail_provider import MailProvider
from examples.user_registration.settings import engine, outbox, service_bus
from examples.user_registration.tables import welcome_mails

GROUP = "email.welcome"
provider = MailProvider(outages=int(os.environ.get("MAIL_PROVIDER_OUTAGES", "1")))
accepts_plus_addresses = os.environ.get("EMAIL_ACCEPTS_PLUS_ADDRESSES") == "1"

router = Router()


@router.subscribe(UserRegistered, group=GROUP, middleware=[Inbox(engine, outbox=outbox)])
async def send_welcome(event: UserRegistered, ctx: Context) -> None:
    local_part = event.email.partition("@")[0]
    if "+" in local_part and not accepts_plus_addresses:
        say("email", f"refuses {event.email}: plus-addresses are not accepted", ctx)
        raise PermanentError(f"address {event.email!r} refused: plus-addresses are not accepted")
    try:
        message_id = await provider.send(
            idempotency_key=ctx.envelope.id, to=event.email, subject=f"Welcome, {event.name}!"
        )
    except ConnectionError as exc:
        say("email", f"try {current_try(ctx)}: {exc}; the retry policy tries again", ctx)
        raise
    assert ctx.session is not None  # the Inbox's transaction
    await ctx.session.execute(
        welcome_mails.insert().values(
            user_id=event.user_id, email=event.email, provider_message_id=message_id
        )
    )
    say("email", f"welcome mail {message_id} sent to {event.email}", ctx)


bus = service_bus("email", [router], with_outbox=True)
