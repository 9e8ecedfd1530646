"""Repository: aggregates loaded from and saved to a store, with concurrency, upcasting and
snapshots; on the in-memory store and on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus import AggregateNotFound, ConcurrencyError, ConfigurationError, Event
from eventbus.aggregate import Aggregate, applies
from eventbus.eventstore import (
    InMemorySnapshotStore,
    Repository,
    Snapshot,
    SnapshotStore,
    SnapshotStoreProtocol,
)
from eventbus.testing.eventstore import InMemoryEventStore
from eventbus.upcasting import Upcasters
from tests.eventstore.conftest import drop, new_store, postgres_engine, sqlite_engine

pytestmark = pytest.mark.anyio


class Opened(Event):
    event_type = "bank.account.opened"
    owner: str


class DepositedV1(Event):
    event_type = "bank.money.deposited"
    event_version = 1
    cents: int


class Deposited(Event):
    event_type = "bank.money.deposited"
    event_version = 2
    amount: float


class Account(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.owner = ""
        self.balance = 0.0
        self.applied = 0  # how many events this instance applied itself (not in snapshots)

    def open(self, owner: str) -> None:
        if self.owner:
            raise ValueError(f"account {self.id} is open already")
        self.record(Opened(owner=owner))

    def deposit(self, amount: float) -> None:
        self.record(Deposited(amount=amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner
        self.applied += 1

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount
        self.applied += 1

    def snapshot(self) -> dict[str, Any]:
        return {"owner": self.owner, "balance": self.balance}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Any, SnapshotStoreProtocol]]:
    """An event store and a snapshot store: in memory, or SQL on SQLite and PostgreSQL."""
    if request.param == "memory":
        yield InMemoryEventStore(), InMemorySnapshotStore()
        return
    engine: AsyncEngine
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path)
    else:
        engine = postgres_engine(request.getfixturevalue("postgres_url"))
    store = await new_store(engine)
    snapshots = SnapshotStore(engine, prefix=f"s{uuid.uuid4().hex[:8]}_", metadata=store.metadata)
    await snapshots.create_tables()
    yield store, snapshots
    await drop(engine, store)
    await engine.dispose()


async def test_an_aggregate_round_trips_through_its_stream(stores: Any) -> None:
    store, _ = stores
    accounts = Repository(store, Account)
    account = Account("a-1")
    account.open("Ada")
    account.deposit(10)
    assert await accounts.save(account) == 2
    assert (account.pending, account.version) == ([], 2)
    loaded = await accounts.get("a-1")
    assert (loaded.owner, loaded.balance, loaded.version) == ("Ada", 10.0, 2)
    assert [r.stream_id for r in await store.read("Account-a-1")] == ["Account-a-1"] * 2
    with pytest.raises(AggregateNotFound, match="no Account 'nobody'"):
        await accounts.get("nobody")
    assert (await accounts.get("nobody", missing_ok=True)).version == 0


async def test_two_saves_from_the_same_version_cannot_both_win(stores: Any) -> None:
    store, _ = stores
    accounts = Repository(store, Account)
    account = Account("a-1")
    account.open("Ada")
    await accounts.save(account)
    first, second = await accounts.get("a-1"), await accounts.get("a-1")
    first.deposit(5)
    second.deposit(7)
    results = await asyncio.gather(
        accounts.save(first), accounts.save(second), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["ConcurrencyError", "int"]
    assert (await accounts.get("a-1")).balance in (5.0, 7.0)
    again = Account("a-1")  # a second "new" account with the same id
    again.open("Eve")
    with pytest.raises(ConcurrencyError, match="expected at version 0"):
        await accounts.save(again)


async def test_older_stored_events_are_upcast_when_loaded(stores: Any) -> None:
    store, _ = stores
    await store.append(
        "Account-a-1", [Opened(owner="Ada"), DepositedV1(cents=250)], expected_version=0
    )
    upcasters = Upcasters()
    upcasters.add(Deposited, 1, lambda data: {"amount": data["cents"] / 100})
    loaded = await Repository(store, Account, upcasters=upcasters).get("a-1")
    assert (loaded.balance, loaded.version) == (2.5, 2)
    split = Upcasters()
    split.add(Deposited, 1, lambda data: [{"amount": 1.0}, {"amount": 1.5}])
    loaded = await Repository(store, Account, upcasters=split).get("a-1")
    assert (loaded.balance, loaded.applied, loaded.version) == (2.5, 3, 2)  # stream version


async def test_snapshots_skip_the_events_before_them_and_a_new_schema_ignores_them(
    stores: Any,
) -> None:
    store, snapshots = stores
    accounts = Repository(store, Account, snapshots=snapshots, snapshot_every=3)
    account = Account("a-1")
    account.open("Ada")
    await accounts.save(account)
    for amount in (1, 2):
        account.deposit(amount)
        await accounts.save(account)  # version 3: a snapshot
    kept = await snapshots.get("Account-a-1")
    assert kept is not None
    assert (kept.version, kept.state) == (3, {"owner": "Ada", "balance": 3.0})
    account.deposit(4)
    await accounts.save(account)
    loaded = await accounts.get("a-1")
    assert (loaded.balance, loaded.version, loaded.applied) == (7.0, 4, 1)  # one event read

    class AccountV2(Account):
        snapshot_version = 2

    fresh = await Repository(
        store, AccountV2, stream_prefix="Account", snapshots=snapshots, snapshot_every=3
    ).get("a-1")
    assert (fresh.balance, fresh.applied) == (7.0, 4)  # the old snapshot was ignored
    upcast = Repository(store, Account, upcasters=_noop(), snapshots=snapshots, snapshot_every=3)
    assert upcast.schema != accounts.schema
    assert (await upcast.get("a-1")).applied == 4


async def test_a_snapshot_never_moves_back(stores: Any) -> None:
    _, snapshots = stores
    await snapshots.put(Snapshot("s", 5, "x", {"n": 5}))
    await snapshots.put(Snapshot("s", 3, "x", {"n": 3}))
    kept = await snapshots.get("s")
    assert kept is not None
    assert (kept.version, kept.state) == (5, {"n": 5})
    await snapshots.put(Snapshot("s", 6, "y", {"n": 6}))
    kept = await snapshots.get("s")
    assert kept is not None
    assert (kept.version, kept.schema) == (6, "y")


def test_bad_configurations_are_refused() -> None:
    store = InMemoryEventStore()
    with pytest.raises(ConfigurationError, match="an Aggregate subclass"):
        Repository(store, object)  # type: ignore[type-var]
    with pytest.raises(ConfigurationError, match="go together"):
        Repository(store, Account, snapshot_every=10)
    with pytest.raises(ConfigurationError, match="integer >= 1"):
        Repository(store, Account, snapshots=InMemorySnapshotStore(), snapshot_every=0)


def _noop() -> Upcasters:
    upcasters = Upcasters()
    upcasters.add(Deposited, 1, lambda data: {"amount": data["cents"] / 100})
    return upcasters


class DepositedV3(Event):
    event_type = "bank.money.deposited"
    event_version = 3
    amount: float
    currency: str


class EuroAccount(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.deposits: list[tuple[float, str]] = []

    @applies(DepositedV3)
    def _deposited(self, event: DepositedV3) -> None:
        self.deposits.append((event.amount, event.currency))


async def test_a_three_version_chain_rebuilds_an_aggregate_from_its_first_events(
    stores: Any,
) -> None:
    """Version 1 and version 2 events stored years apart both reach the version 3 aggregate."""
    store, _ = stores
    await store.append(
        "EuroAccount-e-1",
        [DepositedV1(cents=250), Deposited(amount=1.5)],
        expected_version=0,
    )
    upcasters = Upcasters()
    upcasters.add(DepositedV3, 1, lambda data: {"amount": data["cents"] / 100})
    upcasters.add(DepositedV3, 2, lambda data: {**data, "currency": "EUR"})
    account = await Repository(store, EuroAccount, upcasters=upcasters).get("e-1")
    assert account.deposits == [(2.5, "EUR"), (1.5, "EUR")]
    assert account.version == 2
