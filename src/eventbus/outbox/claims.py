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
* **Unordered** (``ordering="none"``): any claimable row.

On PostgreSQL the candidates are taken with ``FOR UPDATE SKIP LOCKED`` in both modes: a claim
never waits for a row another transaction holds (another relay's claim, or its delete after
publishing), so several relays split the backlog without waiting for each other, and a claim
is never part of a deadlock. (Claims that waited could deadlock with each other and with the
deletes: a row an ``UPDATE`` looked at stays locked until it commits.) In ordered mode a
claim may then take a row whose earlier row of the same key another relay is claiming at that
very moment; the relay's check after the claim (:meth:`Statements.first_unclaimed`) gives
such a row back.

**Cost.** A claim looks at the rows less than a window of positions after the first pending
row: every condition on it is then a range of the ``(state, position)`` index, so its cost
follows the window and not the backlog, whatever plan the database picks (a table whose
backlog built up since it was last analyzed would otherwise be scanned whole, or worse, on
every claim). The relay claims with a window of a few batches, and again with one that covers
every row when that found too few rows that may go. In ordered mode the rows that hold others
back are found once per claim (the first per key), not looked up again for each candidate.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from eventbus.outbox.schema import DEAD, PENDING, PUBLISHED

__all__ = ["Statements", "in_position_order"]


_NOW: sa.BindParameter[float] = sa.bindparam("now", type_=sa.Double())
_UNTIL: sa.BindParameter[float] = sa.bindparam("until", type_=sa.Double())
_TOKEN = sa.bindparam("token", type_=sa.String())
_LIMIT = sa.bindparam("limit", type_=sa.Integer())
_WINDOW = sa.bindparam("window", type_=sa.BigInteger())
_BELOW = sa.bindparam("below", type_=sa.BigInteger())
_KEYS: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
EVERY_ROW = 2**62
"""The window of a claim that looks at every row (positions stay far below it)."""


class Statements:
    """The relay's SQL for one outbox table, one ordering mode and one dialect."""

    def __init__(self, table: sa.Table, *, ordered: bool, dialect: str) -> None:
        self.t = table
        self.ordered = ordered
        self.skip_locked = dialect == "postgresql"
        # Built once: it is a large statement, and building it anew costs more CPU than a
        # round's other statements together.
        self._claim = self._build_claim()
        self._first_unclaimed = self._build_first_unclaimed()
        # A claimed row's columns by name: a SQLAlchemy Row's attribute lookup costs about ten
        # times a named tuple's, and the relay reads each row's columns several times.
        columns = [c.key for c in table.c]
        self._row: Any = namedtuple("ClaimedRow", columns, rename=True)  # type: ignore[misc]

    def rows(self, result: Iterable[Any]) -> list[Any]:
        """The rows of a claim, as named tuples, in position order."""
        return in_position_order(map(self._row._make, result))

    def _claimable(self, t: Any, now: Any) -> sa.ColumnElement[bool]:
        return sa.and_(
            t.c.state == PENDING,
            t.c.next_attempt_at <= now,
            sa.or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at < now),
        )

    def claim(
        self, token: str, now: float, until: float, limit: int, window: int | None
    ) -> tuple[sa.Update, dict[str, Any]]:
        """Lease up to ``limit`` rows that may go now, first in position order, among those less
        than ``window`` positions after the first pending row (``None``: all rows): the
        statement, which returns the claimed rows, and its parameters."""
        parameters = {"token": token, "now": now, "until": until, "limit": limit}
        return self._claim, {**parameters, "window": EVERY_ROW if window is None else window}

    def _build_claim(self) -> sa.Update:
        t, c = self.t, self.t.alias("candidate")
        first = sa.select(sa.func.min(t.c.position)).where(t.c.state == PENDING)
        below = first.scalar_subquery() + _WINDOW  # an index range: the cost follows the window
        candidates = sa.select(c.c.position).where(self._claimable(c, _NOW), c.c.position < below)
        if self.ordered:  # a candidate may go when it comes before its key's first holding row
            holding = self._holding(below)
            candidates = candidates.outerjoin(
                holding, holding.c.aggregateid == c.c.aggregateid
            ).where(sa.or_(holding.c.first.is_(None), c.c.position < holding.c.first))
        candidates = candidates.order_by(c.c.position).limit(_LIMIT)
        if self.skip_locked:  # of the candidate rows only (not of the outer join's side)
            candidates = candidates.with_for_update(skip_locked=True, of=c)
        # The update looks the chosen rows up by position and checks nothing again: on
        # PostgreSQL they are locked (the lock re-checks them against their latest version),
        # on SQLite the statement holds the database's write lock. Each CTE is evaluated once
        # (``MATERIALIZED``: inlined, PostgreSQL may run it again for every row of an outer
        # scan — far slower, and a locking subquery under ``IN`` then claims too many rows).
        chosen = candidates.cte("chosen").prefix_with("MATERIALIZED", dialect="postgresql")
        return (
            sa.update(t)
            .where(t.c.position.in_(sa.select(chosen.c.position)))
            .values(lease_token=_TOKEN, lease_expires_at=_UNTIL)
            .returning(*t.c)
        )

    def _holding(self, below: Any) -> sa.CTE:
        """Per key, the first row that holds the later ones back: dead, leased, or waiting
        for a retry. Only earlier rows hold a candidate back, so ``below`` bounds this too."""
        e = self.t.alias("earlier")
        waiting = sa.or_(e.c.next_attempt_at > _NOW, e.c.lease_expires_at >= _NOW)
        return (
            sa.select(e.c.aggregateid, sa.func.min(e.c.position).label("first"))
            .where(
                e.c.aggregateid.is_not(None),
                sa.or_(
                    sa.and_(e.c.state == DEAD, e.c.position < below),
                    sa.and_(e.c.state == PENDING, e.c.position < below, waiting),
                ),
            )
            .group_by(e.c.aggregateid)
            .cte("holding")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )

    def first_unclaimed(
        self, token: str, keys: Sequence[str], below: int
    ) -> tuple[sa.Select[Any], dict[str, Any]]:
        """Per key, the first row still waiting that this claim does not hold, before position
        ``below`` (the last claimed row's; later ones cannot matter): a claimed row after it
        must not go before it (another relay won it meanwhile). The statement and its
        parameters."""
        return self._first_unclaimed, {"token": token, "keys": list(keys), "below": below}

    def _build_first_unclaimed(self) -> sa.Select[Any]:
        t = self.t
        return (
            sa.select(t.c.aggregateid, sa.func.min(t.c.position))
            .where(
                t.c.aggregateid.in_(_KEYS),
                t.c.position < _BELOW,
                t.c.state.in_((PENDING, DEAD)),
                sa.or_(t.c.lease_token.is_(None), t.c.lease_token != _TOKEN),
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


def in_position_order(rows: Iterable[Any]) -> list[Any]:
    """Claimed rows sorted by ``position`` (the order they are published in)."""
    return sorted(rows, key=_position)


def _position(row: Any) -> int:
    return int(row.position)
