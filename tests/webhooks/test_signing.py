"""Signatures: what the sender puts on the wire verifies with the reference package and with
the receiver helper; rotation sends one signature per valid secret; secrets stay out of logs
and reprs."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from standardwebhooks.webhooks import Webhook

from eventbus.clock import FakeClock
from eventbus.errors import ConfigurationError
from eventbus.webhooks import (
    RetrySchedule,
    SignatureError,
    WebhookReceiver,
    WebhookSender,
    WebhookStore,
    generate_secret,
    signature_headers,
)
from tests.webhooks.conftest import LOOPBACK, Receiver
from tests.webhooks.support import event

pytestmark = pytest.mark.anyio


def test_a_generated_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_")
    assert first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32


def test_a_malformed_secret_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        WebhookReceiver("whsec_not*base64")
    assert "not*base64" not in str(caught.value)


async def test_a_delivery_verifies_with_the_reference_package_and_the_receiver(
    store: WebhookStore, receiver: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = await store.endpoints.add("acme", receiver.script("/s", 500, 200), ["#"])
    sender = WebhookSender(store, guard=LOOPBACK, schedule=RetrySchedule((0, 5), jitter=0))
    sent = event(total=7)
    await store.take(sent)
    await sender.run_once()
    await clock.advance(5)
    await sender.run_once()
    await sender.stop()
    first, second = receiver.to("/s")
    for request in (first, second):
        # The reference implementation, on the raw bytes, against the real clock.
        assert Webhook(endpoint.secret).verify(request.body, request.headers) == json.loads(
            request.body
        )
        helper = WebhookReceiver(endpoint.secret, now=clock.now)
        webhook = helper.verify(request.body, request.headers)
        assert (webhook.id, webhook.type, webhook.data) == (sent.id, "order.placed", {"total": 7})
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 5
    # Every log line but the SQL driver's own DEBUG echo of statement parameters, which
    # shows what is written to the endpoints table, the secrets column included.
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("aiosqlite")]
    assert ours
    assert not [line for line in ours if endpoint.secret in line]
    assert endpoint.secret not in repr(endpoint)
    assert endpoint.secret not in repr(WebhookReceiver(endpoint.secret))


async def test_rotation_signs_with_both_keys_until_the_old_one_expires(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/r", 200), ["#"])
    old = endpoint.secret
    rotated = await store.endpoints.rotate_secret(endpoint.id, overlap=3600)
    new = rotated.secret
    assert new != old
    assert rotated.secrets == (new, old)
    sender = WebhookSender(store, guard=LOOPBACK)
    await store.take(event())
    await sender.run_once()
    await clock.advance(3600)
    await store.take(event())
    await sender.run_once()
    await sender.stop()
    during, after = receiver.to("/r")
    assert len(during.headers["webhook-signature"].split()) == 2
    assert len(after.headers["webhook-signature"].split()) == 1
    sent_at = float(during.headers["webhook-timestamp"])
    for secret in (old, new):  # a receiver on either key accepts requests during the overlap
        WebhookReceiver(secret, now=lambda: sent_at).verify(during.body, during.headers)
    WebhookReceiver(new, now=clock.now).verify(after.body, after.headers)
    with pytest.raises(SignatureError, match="no webhook-signature entry matches"):
        WebhookReceiver(old, now=clock.now).verify(after.body, after.headers)


def test_the_receiver_verifies_raw_bytes_not_reserialised_json() -> None:
    secret, clock = generate_secret(), FakeClock(start=1_700_000_000)
    body = b'{"type": "a.b", "data": {"x": 1}}'
    headers = signature_headers(secret, "msg_1", 1_700_000_000, body)
    helper = WebhookReceiver(secret, now=clock.now)
    assert helper.verify(body, headers).data == {"x": 1}
    with pytest.raises(SignatureError):
        helper.verify(json.dumps(json.loads(body)).replace(" ", "").encode(), headers)


def test_old_and_future_timestamps_are_refused_within_a_configurable_tolerance() -> None:
    secret, clock = generate_secret(), FakeClock(start=1_700_000_000)
    body = b'{"type":"a.b","data":null}'
    headers = signature_headers(secret, "msg_1", 1_700_000_000, body)
    WebhookReceiver(secret, now=clock.now).verify(body, headers)
    clock_later = FakeClock(start=1_700_000_301)
    with pytest.raises(SignatureError, match="beyond the tolerance of 300s"):
        WebhookReceiver(secret, now=clock_later.now).verify(body, headers)
    WebhookReceiver(secret, now=clock_later.now, tolerance=600).verify(body, headers)
    clock_earlier = FakeClock(start=1_699_999_000)
    with pytest.raises(SignatureError):
        WebhookReceiver(secret, now=clock_earlier.now).verify(body, headers)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-signature": "v1"},
        {"webhook-signature": "v1,***"},
        {"webhook-signature": "v2,abc"},
        {"webhook-timestamp": "soon"},
        {"webhook-id": ""},
    ],
)
def test_malformed_headers_are_a_signature_error(change: dict[str, str]) -> None:
    secret, clock = generate_secret(), FakeClock(start=1_700_000_000)
    body = b"{}"
    headers = {**signature_headers(secret, "msg_1", 1_700_000_000, body), **change}
    with pytest.raises(SignatureError):
        WebhookReceiver(secret, now=clock.now).verify(body, headers)
