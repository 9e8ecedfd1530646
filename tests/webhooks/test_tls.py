"""HTTPS with the address pinned: the sender connects to the address the guard checked, and
still verifies the server's certificate against the URL's own host name (sent as SNI)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import httpx
import pytest
import trustme

from eventbus.webhooks import DeliveryRecord, WebhookSender, WebhookStore
from tests.webhooks.conftest import LOOPBACK, Receiver, Request
from tests.webhooks.support import event

pytestmark = pytest.mark.anyio


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@contextlib.contextmanager
def tls_receiver(authority: trustme.CA, name: str) -> Iterator[Receiver]:
    """A receiver on HTTPS whose certificate is for ``name``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(context)
    made = Receiver(tls=context)
    made.thread.start()
    try:
        yield made
    finally:
        made.release.set()
        made.server.shutdown()
        made.server.server_close()


def trusting(authority: trustme.CA) -> httpx.AsyncClient:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return httpx.AsyncClient(verify=context, follow_redirects=False, trust_env=False)


async def deliver_over_https(
    store: WebhookStore, authority: trustme.CA, certified: str
) -> tuple[list[Request], DeliveryRecord]:
    """One delivery to ``https://localhost:…`` served with a certificate for ``certified``."""
    with tls_receiver(authority, certified) as receiver:
        receiver.script("/secure", 200)
        url = f"https://localhost:{receiver.port}/secure"
        endpoint = await store.endpoints.add("acme", url, ["#"])
        client = trusting(authority)
        sender = WebhookSender(store, guard=LOOPBACK, client=client)
        await store.take(event())
        assert await sender.run_once() == 1
        await sender.stop()
        await client.aclose()
        [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
        return receiver.to("/secure"), delivery


async def test_the_certificate_is_checked_against_the_url_host(
    store: WebhookStore, authority: trustme.CA
) -> None:
    [request], delivery = await deliver_over_https(store, authority, "localhost")
    assert request.headers["host"].startswith("localhost:")
    assert delivery.state == "delivered"


async def test_a_certificate_for_another_host_is_refused(
    store: WebhookStore, authority: trustme.CA
) -> None:
    requests, delivery = await deliver_over_https(store, authority, "elsewhere.example")
    assert requests == []
    assert delivery.state == "pending"
    assert delivery.last_error is not None
    assert "certificate" in delivery.last_error.lower()
