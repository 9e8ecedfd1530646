"""The sender's statements: which endpoints have work due, leasing it, settling an attempt.

The lease works as the outbox relay's does (see :mod:`eventbus.outbox.claims`): a claim is one
``UPDATE … RETURNING`` that sets a fresh token and expiry on rows still claimable at that
moment (pending, due, not leased or lease run out), ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so
several senders split the work without waiting for each other; every later write filters on
the token, so a sender whose lease ran out changes nothing. Unlike the relay, a claim takes
the rows of *one endpoint*, and only as many as that endpoint may have in flight: a slow
endpoint's backlog is never leased ahead of the attempts it can take.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from eventbus.webhooks.schema import DEAD, DELIVERED, PENDING, Tables

__all__ = ["Claims"]


class Claims:
    def __init__(self, tables: Tables, *, dialect: str) -> None:
        self.d, self.e, self.a = tables.deliveries, tables.endpoints, tables.attempts
        self.skip_locked = dialect == "postgresql"

    def _claimable(self, now: float) -> sa.ColumnElement[bool]:
        d = self.d
        return sa.and_(
            d.c.state == PENDING,
            d.c.next_attempt_at <= now,
            sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
        )

    def due_endpoints(self, now: float) -> sa.Select[Any]:
        """The enabled endpoints with deliveries that may go now, and how many each has."""
        d, e = self.d, self.e
        return (
            sa.select(e, sa.func.count().label("due"))
            .join(d, d.c.endpoint_id == e.c.id)
            .where(e.c.enabled.is_(True), self._claimable(now))
            .group_by(*e.c)
        )

    def next_due(self) -> sa.Select[Any]:
        """When the earliest pending delivery of an enabled endpoint is due."""
        d, e = self.d, self.e
        return (
            sa.select(sa.func.min(d.c.next_attempt_at))
            .join(e, d.c.endpoint_id == e.c.id)
            .where(e.c.enabled.is_(True), d.c.state == PENDING)
        )

    def claim(
        self, endpoint_id: str, token: str, now: float, until: float, limit: int
    ) -> sa.Update:
        d = self.d
        candidates = (
            sa.select(d.c.position)
            .where(d.c.endpoint_id == endpoint_id, self._claimable(now))
            .order_by(d.c.next_attempt_at, d.c.position)
            .limit(limit)
        )
        if self.skip_locked:
            candidates = candidates.with_for_update(skip_locked=True)
        chosen = candidates.cte("chosen").prefix_with("MATERIALIZED", dialect="postgresql")
        return (
            sa.update(d)
            .where(d.c.position.in_(sa.select(chosen.c.position)))
            .values(lease_token=token, lease_expires_at=until)
            .returning(*d.c)
        )

    def release(self, token: str, position: int) -> sa.Update:
        """Give a row back untried (no attempt counted)."""
        d = self.d
        return (
            sa.update(d)
            .where(d.c.position == position, d.c.lease_token == token)
            .values(lease_token=None, lease_expires_at=None)
        )

    def settle(
        self,
        token: str,
        position: int,
        *,
        now: float,
        next_at: float | None,
        delivered: bool,
        status: int | None,
        error: str | None,
    ) -> sa.Update:
        """One attempt made: delivered, waiting for the next (``next_at``), or dead."""
        d = self.d
        state = DELIVERED if delivered else PENDING if next_at is not None else DEAD
        return (
            sa.update(d)
            .where(d.c.position == position, d.c.lease_token == token)
            .values(
                attempts=d.c.attempts + 1,
                state=state,
                next_attempt_at=next_at if next_at is not None else now,
                last_status=status,
                last_error=error,
                lease_token=None,
                lease_expires_at=None,
                finished_at=None if state == PENDING else now,
            )
        )

    def log(self, row: Any, **values: Any) -> sa.Insert:
        return sa.insert(self.a).values(
            delivery_id=row.id, endpoint_id=row.endpoint_id, event_id=row.event_id, **values
        )

    def disable(self, endpoint_id: str, reason: str, now: float) -> sa.Update:
        e = self.e
        return (
            sa.update(e)
            .where(e.c.id == endpoint_id)
            .values(enabled=False, disabled_reason=reason, updated_at=now)
        )
