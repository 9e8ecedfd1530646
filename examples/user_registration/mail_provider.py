"""Stands in for an e-mail API (SES, Postmark, SendGrid…), so the example needs no account.

Like those APIs it takes an idempotency key: a second request with the same key sends nothing
and returns the first message's id. The e-mail service passes the event id, so a redelivered
event can never mail twice, even if its database transaction failed after the provider had
accepted the mail. ``outages`` makes the first calls fail as a provider under load does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


class ProviderUnavailable(ConnectionError):
    """The API answered 503: try again later (a transient failure)."""


@dataclass
class MailProvider:
    outages: int = 0
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(self, *, idempotency_key: str, to: str, subject: str) -> str:
        """Send one mail; returns the provider's message id."""
        if self.outages > 0:
            self.outages -= 1
            raise ProviderUnavailable("the mail API answered 503 Service Unavailable")
        if idempotency_key not in self.sent:
            self.sent[idempotency_key] = (f"msg-{next(self._ids)}", to)
        return self.sent[idempotency_key][0]
