"""The HTTP Idempotency-Key middleware on a FastAPI app driven through httpx, with every store
(memory; Redis; SQL on SQLite and PostgreSQL, owning the request's transaction)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus.clock import FakeClock
from eventbus.errors import ConfigurationError
from eventbus.fastapi import REPLAYED_HEADER, IdempotencyKeyMiddleware, parse_key
from eventbus.middleware import IdempotencyStore, MemoryIdempotencyStore
from eventbus.middleware.idempotency_redis import RedisIdempotencyStore
from eventbus.middleware.idempotency_sql import SqlIdempotencyStore
from eventbus.outbox import Outbox
from tests.web.shop import Shop, make_shop

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Case:
    shop: Shop
    store: IdempotencyStore
    kind: str
    expire: Callable[[], Awaitable[None]]
    """Make every stored key run out now."""
    redis: aioredis.Redis | None = None


def client_id(scope: Any) -> str | None:
    value = dict(scope["headers"]).get(b"x-client")
    return value.decode() if value else None


class Wall:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _store(
    kind: str, engine: AsyncEngine, request: pytest.FixtureRequest
) -> tuple[IdempotencyStore, Callable[[], Awaitable[None]], aioredis.Redis | None]:
    if kind == "memory":
        clock = FakeClock()
        return MemoryIdempotencyStore(clock=clock), lambda: clock.advance(10**7), None
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        client = aioredis.Redis.from_url(url, socket_timeout=5)
        prefix = f"eventbus-test:{uuid.uuid4().hex}:"

        async def expire() -> None:
            async for key in client.scan_iter(f"{prefix}*"):
                await client.delete(key)

        return RedisIdempotencyStore(client, prefix=prefix), expire, client
    wall = Wall()
    store = SqlIdempotencyStore(engine, table=f"idem_{uuid.uuid4().hex[:10]}", now=wall)
    await store.create_table()

    async def later() -> None:
        wall.now += 10**7

    return store, later, None


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis), "sql"])
async def case(
    request: pytest.FixtureRequest, engine: AsyncEngine, outbox: Outbox
) -> AsyncIterator[Case]:
    kind = request.param
    shop = await make_shop(engine, outbox)
    store, expire, redis = await _store(kind, engine, request)
    sessionmaker = shop.transaction.sessionmaker if kind == "sql" else None
    shop.app.add_middleware(
        IdempotencyKeyMiddleware,
        store=store,
        identity=client_id,
        sessionmaker=sessionmaker,
    )
    async with shop.app.router.lifespan_context(shop.app):
        yield Case(shop, store, kind, expire, redis)
    if isinstance(store, SqlIdempotencyStore):
        async with engine.begin() as connection:
            await connection.run_sync(store.table.drop)
    if redis is not None:
        await expire()
        await redis.aclose()


def order(order_id: str = "o-1", **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "total": 42, **extra}


async def post(
    client: httpx.AsyncClient, key: str | None, body: dict[str, Any], **headers: str
) -> httpx.Response:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/orders", json=body, headers=headers)


async def test_a_retry_replays_the_stored_response_and_the_endpoint_runs_once(case: Case) -> None:
    shop = case.shop
    async with shop.client() as client:
        first = await post(client, '"k-1"', order())
        again = await post(client, '"k-1"', order())
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["content-type"] == first.headers["content-type"]
    assert shop.runs == 1
    assert await shop.saved() == ["o-1"]
    assert await shop.published() == ["o-1"]  # one event, however many retries


async def test_quoted_and_bare_keys_are_the_same_key(case: Case) -> None:
    async with case.shop.client() as client:
        assert (await post(client, '"abc-123"', order())).status_code == 201
        bare = await post(client, "abc-123", order())
    assert bare.headers["idempotent-replayed"] == "true"
    assert case.shop.runs == 1


async def test_the_same_key_with_another_request_is_422(case: Case) -> None:
    async with case.shop.client() as client:
        await post(client, "k-2", order())
        other = await post(client, "k-2", order(total=43))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["status"] == 422
    assert case.shop.runs == 1


async def test_a_missing_or_malformed_key_is_400_and_nothing_runs(case: Case) -> None:
    async with case.shop.client() as client:
        missing = await post(client, None, order())
        twice = await client.post(
            "/orders", json=order(), headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
        )
        bad = [await post(client, key, order()) for key in ('"open', '""', "x" * 256, "a b")]
    assert missing.status_code == 400
    assert "Idempotency-Key" in missing.json()["detail"]
    assert twice.status_code == 400
    assert [r.status_code for r in bad] == [400, 400, 400, 400]
    assert case.shop.runs == 0


async def test_a_concurrent_request_with_a_key_in_flight_is_409(case: Case) -> None:
    shop = case.shop
    async with shop.client() as client:

        async def second() -> httpx.Response:
            await asyncio.wait_for(shop.entered.wait(), 10)  # the first is inside the endpoint
            try:
                return await post(client, "k-3", order(wait=True))
            finally:
                shop.gate.set()

        first, concurrent = await asyncio.gather(post(client, "k-3", order(wait=True)), second())
        third = await post(client, "k-3", order(wait=True))
    assert concurrent.status_code == 409
    assert int(concurrent.headers["retry-after"]) >= 1
    assert first.status_code == 201
    assert third.headers["idempotent-replayed"] == "true"
    assert shop.runs == 1
    assert await shop.published() == ["o-1"]


async def test_a_server_error_is_not_stored_and_the_retry_runs_again(case: Case) -> None:
    shop = case.shop
    shop.crash_next = True
    async with shop.client() as client:
        failed = await post(client, "k-4", order())
        retried = await post(client, "k-4", order())
    assert failed.status_code == 500
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert shop.runs == 2
    assert await shop.saved() == ["o-1"]
    assert await shop.published() == ["o-1"]


async def test_keys_expire(case: Case) -> None:
    async with case.shop.client() as client:
        await post(client, "k-5", order("o-1"))
        assert (await post(client, "k-5", order("o-2"))).status_code == 422
        if isinstance(case.store, RedisIdempotencyStore) and case.redis is not None:
            ttl = await case.redis.pttl(case.store.key("http", "k-5"))  # Redis expires it
            assert 24 * 3600_000 - 60_000 < ttl <= 24 * 3600_000  # the 24 h default
        await case.expire()
        after = await post(client, "k-5", order("o-2"))  # forgotten: a new request
    assert after.status_code == 201
    assert case.shop.runs == 2


async def test_keys_of_different_clients_never_meet(case: Case) -> None:
    async with case.shop.client() as client:
        ada = await post(client, "k-6", order("o-ada"), **{"x-client": "ada"})
        bob = await post(client, "k-6", order("o-bob"), **{"x-client": "bob"})
        ada_again = await post(client, "k-6", order("o-ada"), **{"x-client": "ada"})
        long_name = "a" * 300  # a bearer token, say: hashed into the cache key
        long_first = await post(client, "k-6", order("o-long"), **{"x-client": long_name})
        long_again = await post(client, "k-6", order("o-long"), **{"x-client": long_name})
    assert (ada.status_code, bob.status_code) == (201, 201)
    assert ada_again.headers["idempotent-replayed"] == "true"
    assert long_first.status_code == 201
    assert long_again.headers["idempotent-replayed"] == "true"
    assert await case.shop.saved() == ["o-ada", "o-bob", "o-long"]


async def test_with_a_session_an_endpoint_that_raises_stores_nothing(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    async with sql_shop(engine, outbox, SqlIdempotencyStore) as shop, shop.client() as client:
        first = await post(client, "k-7", order(fail="http"))
        retried = await post(client, "k-7", order(fail="http"))
        assert (first.status_code, retried.status_code) == (409, 409)
        assert "idempotent-replayed" not in retried.headers
        assert shop.runs == 2  # the key was released with the rollback
        assert await shop.saved() == []
        assert await shop.published() == []


@contextlib.asynccontextmanager
async def sql_shop(
    engine: AsyncEngine, outbox: Outbox, store_class: type[SqlIdempotencyStore]
) -> AsyncIterator[Shop]:
    """A shop whose Idempotency-Key middleware owns the request's transaction."""
    shop = await make_shop(engine, outbox)
    store = store_class(engine, table=f"idem_{uuid.uuid4().hex[:10]}")
    await store.create_table()
    shop.app.add_middleware(
        IdempotencyKeyMiddleware, store=store, sessionmaker=shop.transaction.sessionmaker
    )
    try:
        async with shop.app.router.lifespan_context(shop.app):
            yield shop
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(store.table.drop)


class FailingMarker(SqlIdempotencyStore):
    async def complete_in(self, session: Any, *args: Any, **kwargs: Any) -> None:
        await super().complete_in(session, *args, **kwargs)
        raise ConnectionError("the database went away before the commit")


async def test_the_response_the_rows_and_the_outbox_commit_together(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    async with sql_shop(engine, outbox, FailingMarker) as shop, shop.client() as client:
        failed = await post(client, "k-8", order())
        assert failed.status_code == 500
        assert shop.runs == 1
        assert await shop.saved() == []  # the order rolled back with the response
        assert await shop.published() == []  # and so did its event
    async with sql_shop(engine, outbox, SqlIdempotencyStore) as shop, shop.client() as client:
        assert (await post(client, "k-8", order())).status_code == 201
        assert await shop.saved() == ["o-1"]


def test_a_session_needs_a_store_that_writes_in_it() -> None:
    with pytest.raises(ConfigurationError, match="SqlIdempotencyStore"):
        IdempotencyKeyMiddleware(
            lambda *a: None,  # type: ignore[arg-type]
            store=MemoryIdempotencyStore(),
            sessionmaker=lambda: None,
        )


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ('"abc"', "abc"),
        ("abc", "abc"),
        ('  "a b"  ', "a b"),
        ('"say \\"hi\\" \\\\o/"', 'say "hi" \\o/'),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"open', None),
        ('""', None),
        ("", None),
        ("a b", None),
        ('"bad \\x"', None),
        ('"é"', None),
        ("x" * 256, None),
    ],
)
def test_keys_are_rfc_8941_strings_or_bare_tokens(value: str, key: str | None) -> None:
    assert parse_key(value) == key


async def test_a_plain_asgi_app_with_keys_optional_and_only_some_paths() -> None:
    runs: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        runs.append(f"{scope['method']} {scope['path']} {body.decode()}")
        status = 503 if body == b"busy" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = IdempotencyKeyMiddleware(
        app,
        store=MemoryIdempotencyStore(),
        required=False,
        paths=["/pay"],
        store_server_errors=True,
    )
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        key = {"Idempotency-Key": "k"}
        await client.post("/pay", content=b"1")  # no key: runs, nothing stored
        await client.post("/pay", content=b"1", headers=key)
        replay = await client.post("/pay", content=b"1", headers=key)
        await client.post("/other", content=b"2", headers=key)  # not a covered path
        await client.put("/pay", content=b"3", headers=key)  # not a covered method
        await client.patch("/pay", content=b"4", headers={"Idempotency-Key": "p"})
        patched = await client.patch("/pay", content=b"4", headers={"Idempotency-Key": "p"})
        await client.post("/pay", content=b"busy", headers={"Idempotency-Key": "s"})
        unavailable = await client.post("/pay", content=b"busy", headers={"Idempotency-Key": "s"})
    assert replay.headers[REPLAYED_HEADER] == "true"
    assert patched.headers[REPLAYED_HEADER] == "true"
    assert (unavailable.status_code, unavailable.headers[REPLAYED_HEADER]) == (503, "true")
    assert runs == [
        "POST /pay 1",
        "POST /pay 1",
        "POST /other 2",
        "PUT /pay 3",
        "PATCH /pay 4",
        "POST /pay busy",
    ]
