"""The address guard: nothing reaches loopback, private, link-local or metadata addresses
unless allowed, judged on the address the host resolves to, and the request then goes to the
address that was checked."""

from __future__ import annotations

import ipaddress

import pytest

from eventbus.webhooks import AddressGuard, BlockedAddress, WebhookSender, WebhookStore
from eventbus.webhooks.guard import Unresolved
from tests.webhooks.conftest import LOOPBACK, Receiver
from tests.webhooks.support import event

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "fd00:ec2::254",
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "::ffff:127.0.0.1",  # loopback behind an IPv4-mapped IPv6 address
        "224.0.0.1",
    ],
)
def test_non_global_addresses_are_refused_by_default(address: str) -> None:
    assert AddressGuard().refuses(ipaddress.ip_address(address)) is not None


def test_a_public_address_passes_and_an_allowed_network_is_let_through() -> None:
    assert AddressGuard().refuses(ipaddress.ip_address("93.184.216.34")) is None
    guard = AddressGuard(allow=["10.0.0.0/8"])
    assert guard.refuses(ipaddress.ip_address("10.9.9.9")) is None
    assert guard.refuses(ipaddress.ip_address("192.168.0.1")) is not None


async def test_a_hostname_that_resolves_to_loopback_is_refused() -> None:
    with pytest.raises(BlockedAddress, match="loopback"):
        await AddressGuard().resolve("http://localhost:8080/hook")


async def test_a_host_that_does_not_resolve_is_tried_again_later(store: WebhookStore) -> None:
    with pytest.raises(Unresolved, match=r"cannot resolve nothing\.invalid"):
        await AddressGuard().resolve("https://nothing.invalid/hook")
    endpoint = await store.endpoints.add("acme", "https://nothing.invalid/hook", ["#"])
    sender = WebhookSender(store)
    await store.take(event())
    assert await sender.run_once() == 1
    await sender.stop()
    [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert (delivery.state, delivery.attempts) == ("pending", 1)


async def test_the_checked_address_is_the_one_connected_to() -> None:
    target = await LOOPBACK.resolve("http://user:pw@localhost:8080/hook?x=1")
    assert target.address in ("127.0.0.1", "::1")
    shown = target.address if target.address == "127.0.0.1" else f"[{target.address}]"
    assert target.pinned_url == f"http://user:pw@{shown}:8080/hook?x=1"
    assert target.host == "localhost:8080"


async def test_the_sender_refuses_127_0_0_1_by_default_and_the_delivery_is_dead(
    store: WebhookStore, receiver: Receiver
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/x", 200), ["#"])
    named = await store.endpoints.add("acme", f"http://localhost:{receiver.port}/named", ["#"])
    sender = WebhookSender(store)
    await store.take(event())
    assert await sender.run_once() == 2
    await sender.stop()
    assert receiver.requests == []
    for refused in (endpoint, named):
        [delivery] = await store.deliveries.list(endpoint_id=refused.id)
        assert delivery.state == "dead"
        assert delivery.last_error is not None
        assert "loopback address" in delivery.last_error


async def test_an_allowed_hostname_is_reached_with_its_own_host_header(
    store: WebhookStore, receiver: Receiver
) -> None:
    receiver.script("/named", 200)
    await store.endpoints.add("acme", f"http://localhost:{receiver.port}/named", ["#"])
    sender = WebhookSender(store, guard=AddressGuard(allow=["127.0.0.0/8", "::1/128"]))
    await store.take(event())
    assert await sender.run_once() == 1
    await sender.stop()
    [request] = receiver.to("/named")
    assert request.headers["host"] == f"localhost:{receiver.port}"
