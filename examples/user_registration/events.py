"""The event the services share: the auth service publishes it, the others consume it."""

from __future__ import annotations

from eventbus import Event


class UserRegistered(Event):
    """A user account was created. Published by the auth service, through its outbox."""

    event_type = "auth.user.registered"
    user_id: str
    email: str
    name: str
