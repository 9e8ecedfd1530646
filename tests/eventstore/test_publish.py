"""The store is the outbox: ``append(..., publish=True)`` stages what it stores, in the same
transaction, so subscribers receive exactly the stored envelopes, same ids, and nothing when
the append is refused or rolled back."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from eventbus import ConcurrencyError, ConfigurationError, Envelope, Event, EventBus, Router
from eventbus.eventstore import EventStore
from eventbus.outbox import Outbox, OutboxRelay
from eventbus.testing.eventstore import InMemoryEventStore
from tests.eventstore.conftest import drop, new_store

pytestmark = pytest.mark.anyio


class Opened(Event):
    event_type = "bank.account.opened"
    owner: str


def listening() -> tuple[Router, list[Envelope]]:
    router, got = Router(), list[Envelope]()

    @router.subscribe(Opened, group="audit")
    async def audit(envelope: Envelope) -> None:
        got.append(envelope)

    return router, got


async def test_what_is_appended_is_what_subscribers_receive(engine: AsyncEngine) -> None:
    tag = uuid.uuid4().hex[:8]
    outbox = Outbox(table=f"o{tag}_outbox", inbox=f"o{tag}_inbox")
    await outbox.create_tables(engine)
    plain = await new_store(engine)
    store = EventStore(engine, prefix=plain.table.name.removesuffix("events"), outbox=outbox)
    router, got = listening()
    try:
        async with EventBus("memory://", routers=[router]) as bus:
            relay = OutboxRelay(engine, bus, outbox=outbox)
            await store.append("acc-1", [Opened(owner="Ada")], expected_version=0, publish=True)
            with pytest.raises(ConcurrencyError):  # refused: nothing stored, nothing staged
                await store.append("acc-1", [Opened(owner="Eve")], expected_version=0, publish=True)
            async with AsyncSession(engine) as session, session.begin():  # rolled back
                await store.append(
                    "acc-2", [Opened(owner="Bob")], expected_version=0, session=session,
                    publish=True,
                )  # fmt: skip
                await session.rollback()
            [stored] = await store.read("acc-1")
            retry = await store.append(
                "acc-1", [stored.envelope], expected_version=0, publish=True
            )  # a retry of the committed append: stores and stages nothing more
            assert retry == 1
            assert await relay.run_once() == 1
            await bus.drain()
        assert got == [stored.envelope]  # same id, time, correlation, data
        assert await store.read("acc-2") == []
    finally:
        await drop(engine, plain)
        async with engine.begin() as connection:
            await connection.run_sync(outbox.metadata.drop_all)


async def test_publishing_needs_somewhere_to_publish(engine: AsyncEngine) -> None:
    store = await new_store(engine)
    try:
        with pytest.raises(ConfigurationError, match="outbox=Outbox"):
            await store.append("a", [Opened(owner="Ada")], expected_version=0, publish=True)
        assert await store.read("a") == []
    finally:
        await drop(engine, store)
    with pytest.raises(ConfigurationError, match=r"InMemoryEventStore\(bus=\.\.\.\)"):
        await InMemoryEventStore().append(
            "a", [Opened(owner="Ada")], expected_version=0, publish=True
        )


async def test_the_in_memory_store_publishes_on_its_bus() -> None:
    router, got = listening()
    async with EventBus("memory://", routers=[router]) as bus:
        store = InMemoryEventStore(bus=bus)
        await store.append("acc-1", [Opened(owner="Ada")], expected_version=0, publish=True)
        await store.append("acc-1", [Opened(owner="Ada")], expected_version=1)  # not published
        await bus.drain()
        stored = [record.envelope for record in await store.read("acc-1")]
    assert got == stored[:1]


async def test_a_repository_save_can_publish_the_new_events() -> None:
    from eventbus.aggregate import Aggregate, applies
    from eventbus.eventstore import Repository

    class Account(Aggregate):
        def open(self, owner: str) -> None:
            self.record(Opened(owner=owner))

        @applies(Opened)
        def _opened(self, event: Opened) -> None:
            self.owner = event.owner

    router, got = listening()
    async with EventBus("memory://", routers=[router]) as bus:
        store = InMemoryEventStore(bus=bus)
        account = Account("acc-1")
        account.open("Ada")
        await Repository(store, Account).save(account, publish=True)
        await bus.drain()
    assert [e.id for e in got] == [r.envelope.id for r in await store.read("Account-acc-1")]
