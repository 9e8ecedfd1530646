"""Registering endpoints: bad input is refused with the fix named, unknown ids are a clear
error, a rotation with no overlap drops the old secret at once, and a store can be given a
URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.clock import FakeClock
from eventbus.errors import ConfigurationError
from eventbus.webhooks import EndpointNotFound, WebhookStore
from eventbus.webhooks.deliveries import DeliveryNotFound

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("tenant", "url", "types", "message"),
    [
        ("acme", "ftp://hooks.example/x", ["#"], "http:// or https://"),
        ("acme", "https:///no-host", ["#"], "http:// or https://"),
        ("acme", "https://hooks.example/x", [], "event_types lists"),
        ("acme", "https://hooks.example/x", "order.*", "event_types lists"),
        ("acme", "https://hooks.example/x", ["order created"], "invalid endpoint event type"),
        ("", "https://hooks.example/x", ["#"], "needs a tenant"),
    ],
)
async def test_bad_endpoints_are_refused(
    store: WebhookStore, tenant: str, url: str, types: list[str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await store.endpoints.add(tenant, url, types)
    assert await store.endpoints.list() == []


async def test_unknown_ids_are_a_clear_error(store: WebhookStore) -> None:
    with pytest.raises(EndpointNotFound, match="no webhook endpoint 'ep_nope'"):
        await store.endpoints.get("ep_nope")
    with pytest.raises(EndpointNotFound):
        await store.endpoints.enable("ep_nope")
    with pytest.raises(DeliveryNotFound):
        await store.deliveries.replay("dl_nope")


async def test_endpoints_are_listed_per_tenant_and_a_given_secret_is_kept(
    store: WebhookStore, clock: FakeClock
) -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    first = await store.endpoints.add("acme", "https://a.example/h", ["#"], secret=secret)
    await clock.advance(1)
    second = await store.endpoints.add("acme", "https://b.example/h", ["order.*"])
    await store.endpoints.add("globex", "https://c.example/h", ["#"])
    assert [e.id for e in await store.endpoints.list(tenant="acme")] == [first.id, second.id]
    assert first.secret == secret
    await store.endpoints.disable(second.id, "paused by support")
    paused = await store.endpoints.get(second.id)
    assert (paused.enabled, paused.disabled_reason) == (False, "paused by support")
    rotated = await store.endpoints.rotate_secret(first.id, overlap=0)
    assert rotated.signing_secrets(clock.now()) == [rotated.secret]
    assert rotated.secret != secret


async def test_a_store_can_own_its_engine(tmp_path: Path) -> None:
    store = WebhookStore(f"sqlite+aiosqlite:///{tmp_path / 'own.sqlite3'}")
    await store.create_tables()
    endpoint = await store.endpoints.add("acme", "https://a.example/h", ["#"])
    assert (await store.endpoints.get(endpoint.id)).url == "https://a.example/h"
    await store.close()
