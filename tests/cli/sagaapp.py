"""An application's sagas, as ``eventbus sagas`` finds them: a ticket saga stored with
``SqlSagaStore`` on the database ``CLIAPP_DB`` names, in tables of the test's own
(``CLIAPP_PREFIX``), whose compensation fails while ``FAULTS["undo"]`` says so."""

from __future__ import annotations

import os

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from eventbus import Event
from eventbus.outbox import Outbox
from eventbus.sagas import MemorySagaStore, Saga, SagaStep, SqlSagaStore

FAULTS = {"undo": True}


class Opened(Event):
    event_type = "clitest.ticket.opened"
    ticket: str


class Closed(Event):
    event_type = "clitest.ticket.closed"
    ticket: str
    resolved: bool


class Ticket(BaseModel):
    ticket: str
    undone: bool = False


def build(db: str | None = None, prefix: str | None = None) -> dict[str, Saga[Ticket]]:
    """The application's two sagas, ``ticket`` and ``audit``, on one store."""
    db, prefix = db or os.environ["CLIAPP_DB"], prefix or os.environ["CLIAPP_PREFIX"]
    options = {"connect_args": {"timeout": 30}} if db.startswith("sqlite") else {}
    engine = create_async_engine(db, **options)
    outbox = Outbox(table=f"outbox_{prefix}", inbox=f"inbox_{prefix}")
    store = SqlSagaStore(engine, outbox=outbox, table=f"sagas_{prefix}", timers=f"timers_{prefix}")
    ticket = Saga("ticket", Ticket, key="ticket", store=store, compensation_retries=())

    @ticket.starts(Opened)
    def opened(event: Opened, step: SagaStep[Ticket]) -> None:
        step.state = Ticket(ticket=event.ticket)
        step.compensate_with("undo")
        step.timeout("escalate", after=3600)
        step.goto("waiting")

    @ticket.on(Closed, when="waiting")
    def closed(event: Closed, step: SagaStep[Ticket]) -> None:
        if event.resolved:
            step.complete()
        else:
            step.fail("closed unresolved")

    @ticket.compensation("undo")
    def undo(step: SagaStep[Ticket]) -> None:
        if FAULTS["undo"]:
            raise RuntimeError("the helpdesk API is down")
        step.state.undone = True

    audit = Saga("audit", Ticket, key="ticket", store=store)
    audit.starts(Opened)(opened)
    return {"ticket": ticket, "audit": audit}


def sagas() -> dict[str, Saga[Ticket]]:
    """A factory returning a dict of sagas (``--saga NAME`` picks one)."""
    return build()


def ticket() -> Saga[Ticket]:
    """A factory returning one saga."""
    return build()["ticket"]


bare = Saga("bare", Ticket, key="ticket")
in_memory = Saga("in_memory", Ticket, key="ticket", store=MemorySagaStore())
