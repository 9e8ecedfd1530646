"""The relay's statements: which rows may go now, claiming them, and settling them.

A row may go when it is pending, due (``next_attempt_at``) and not leased (or its lease has
run out: its relay died). Claiming is one ``UPDATE … RETURNING`` that sets a fresh lease token
and expiry on the rows that are still claimable at that moment, so two relays never hold the
same row; every later write filters on the token, so a relay whose lease ran out changes
nothing.

* **Ordered by key** (``ordering="key"``): a row may go only when no earlier row of its key
  (``aggregateid``) is dead, leased by a relay, or waiting for a retry; rows without a key are
  not ordered. Within a batch the rows of one key go in ``position`` order, which is their
  commit order (see :mod:`eventbus.outbox.store`).
* **Unordered** (``ordering="none"``): any claimable row; on PostgreSQL the candidates are
  taken with ``FOR UPDATE SKIP LOCKED``, so several relays split the backlog without waiting
  for each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from eventbus.outbox.schema import DEAD, PENDING, PUBLISHED

__all__ = ["Statements"]


class Statements:
    """The relay's SQL for one outbox table, one ordering mode and one dialect."""

    def __init__(self, table: sa.Table, *, ordered: bool, dialect: str) -> None:
        self.t = table
        self.ordered = ordered
        self.skip_locked = dialect == "postgresql" and not ordered

    def _claimable(self, t: Any, now: float) -> sa.ColumnElement[bool]:
        return sa.and_(
            t.c.state == PENDING,
            t.c.next_attempt_at <= now,
            sa.or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at < now),
        )

    def _blocked(self, t: Any, now: float) -> sa.ColumnElement[bool]:
        """An earlier row of the same key holds this one (a row of ``t``) back."""
        earlier = self.t.alias("earlier")
        holding = sa.or_(
            earlier.c.state == DEAD,
            sa.and_(
                earlier.c.state == PENDING,
                sa.or_(earlier.c.next_attempt_at > now, earlier.c.lease_expires_at >= now),
            ),
        )
        return sa.exists().where(
            earlier.c.aggregateid == t.c.aggregateid,
            earlier.c.position < t.c.position,
            holding,
        )

    def claim(self, token: str, now: float, until: float, limit: int) -> sa.Update:
        """Lease up to ``limit`` rows that may go now; returns the claimed rows."""
        t, c = self.t, self.t.alias("candidate")
        candidates = sa.select(c.c.position).where(self._claimable(c, now))
        if self.ordered:
            candidates = candidates.where(sa.or_(c.c.aggregateid.is_(None), ~self._blocked(c, now)))
        candidates = candidates.order_by(c.c.position).limit(limit)
        if self.skip_locked:
            candidates = candidates.with_for_update(skip_locked=True)
        # A CTE, evaluated once: PostgreSQL may rescan a locking subquery under ``IN`` for
        # every outer row, and so claim far more than ``limit`` rows.
        chosen = candidates.cte("chosen")
        return (
            sa.update(t)
            .where(t.c.position.in_(sa.select(chosen.c.position)), self._claimable(t, now))
            .values(lease_token=token, lease_expires_at=until)
            .returning(*t.c)
        )

    def first_unclaimed(self, token: str, keys: Sequence[str]) -> sa.Select[Any]:
        """Per key, the first row still waiting that this claim does not hold: a claimed row
        after it must not go before it (another relay won it meanwhile)."""
        t = self.t
        return (
            sa.select(t.c.aggregateid, sa.func.min(t.c.position))
            .where(
                t.c.aggregateid.in_(keys),
                t.c.state.in_((PENDING, DEAD)),
                sa.or_(t.c.lease_token.is_(None), t.c.lease_token != token),
            )
            .group_by(t.c.aggregateid)
        )

    def release(self, token: str, positions: Sequence[int]) -> sa.Update:
        """Give rows back untried (they go again at once, no attempt counted)."""
        t = self.t
        return (
            sa.update(t)
            .where(t.c.position.in_(positions), t.c.lease_token == token)
            .values(lease_token=None, lease_expires_at=None)
        )

    def delete_published(self, token: str, positions: Sequence[int]) -> sa.Delete:
        t = self.t
        return sa.delete(t).where(t.c.position.in_(positions), t.c.lease_token == token)

    def keep_published(self, token: str, positions: Sequence[int], now: float) -> sa.Update:
        t = self.t
        return (
            sa.update(t)
            .where(t.c.position.in_(positions), t.c.lease_token == token)
            .values(state=PUBLISHED, published_at=now, lease_token=None, lease_expires_at=None)
        )

    def failed(
        self, token: str, position: int, *, error: str, next_at: float, dead: bool
    ) -> sa.Update:
        """One more failed attempt: back off, or (``dead``) stop trying."""
        t = self.t
        return (
            sa.update(t)
            .where(t.c.position == position, t.c.lease_token == token)
            .values(
                attempts=t.c.attempts + 1,
                next_attempt_at=next_at,
                last_error=error,
                state=DEAD if dead else PENDING,
                lease_token=None,
                lease_expires_at=None,
            )
        )

    def expired_published(self, before: float, limit: int = 1000) -> sa.Delete:
        """Published rows kept past their retention."""
        t = self.t
        old = (
            sa.select(t.c.position)
            .where(t.c.state == PUBLISHED, t.c.published_at < before)
            .limit(limit)
            .scalar_subquery()
        )
        return sa.delete(t).where(t.c.position.in_(old))
