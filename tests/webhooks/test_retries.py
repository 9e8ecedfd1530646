"""What each answer of a real receiver does to a delivery: retried on the schedule, honoured
``Retry-After``, final, endpoint disabled, dead after the last attempt — time driven by the
fake clock, every request a real HTTP request to a local server."""

from __future__ import annotations

import json

import pytest

from eventbus.clock import FakeClock
from eventbus.webhooks import RetrySchedule, WebhookSender, WebhookStore
from eventbus.webhooks.policy import MAX_RETRY_AFTER, Outcome, judge, retry_after
from tests.webhooks.conftest import HANG, LOOPBACK, Receiver
from tests.webhooks.support import event

pytestmark = pytest.mark.anyio

NO_JITTER = RetrySchedule(delays=(0, 5, 300), jitter=0)


def sender_for(store: WebhookStore, **options: object) -> WebhookSender:
    settings: dict[str, object] = {"guard": LOOPBACK, "schedule": NO_JITTER, **options}
    return WebhookSender(store, **settings)  # type: ignore[arg-type]


async def test_500_twice_then_200_is_delivered_once_on_the_third_attempt(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/a", 500, 500, 200), ["#"])
    sent = event(total=42)
    sender = sender_for(store)
    assert await store.take(sent) == 1
    assert await sender.run_once() == 1
    assert await sender.run_once() == 0, "the retry waits for its delay"
    await clock.advance(4.9)
    assert await sender.run_once() == 0
    await clock.advance(0.1)
    assert await sender.run_once() == 1
    await clock.advance(299)
    assert await sender.run_once() == 0
    await clock.advance(1)
    assert await sender.run_once() == 1
    await clock.advance(10**6)
    assert await sender.run_once() == 0, "delivered: never sent again"
    await sender.stop()

    requests = receiver.to("/a")
    assert [r.headers["webhook-id"] for r in requests] == [sent.id] * 3
    assert len({r.body for r in requests}) == 1
    document = json.loads(requests[0].body)
    assert document["type"] == "order.placed"
    assert document["data"] == {"total": 42}
    assert document["timestamp"].endswith("Z")
    [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 3, 200)
    log = await store.deliveries.attempts(endpoint.id)
    assert [(a.attempt, a.status_code, a.outcome) for a in log] == [
        (3, 200, "delivered"),
        (2, 500, "pending"),
        (1, 500, "pending"),
    ]
    assert log[1].next_attempt_at is not None
    assert log[0].next_attempt_at is None
    assert all(a.latency >= 0 for a in log)


async def test_429_waits_for_retry_after_not_the_schedule(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    url = receiver.script("/t", (429, {"Retry-After": "120"}), 200)
    endpoint = await store.endpoints.add("acme", url, ["#"])
    sender = sender_for(store)
    await store.take(event())
    assert await sender.run_once() == 1
    await store.take(event())  # the endpoint is throttled: this one waits too
    await clock.advance(5)  # the schedule's next delay: Retry-After says longer
    assert await sender.run_once() == 0
    await clock.advance(114.9)
    assert await sender.run_once() == 0
    await clock.advance(0.1)
    assert await sender.run_once() == 2
    await sender.stop()
    states = {d.state for d in await store.deliveries.list(endpoint_id=endpoint.id)}
    assert states == {"delivered"}
    [first_try] = [a for a in await store.deliveries.attempts(endpoint.id) if a.status_code == 429]
    assert first_try.next_attempt_at == pytest.approx(first_try.started_at + 120, abs=0.01)


async def test_400_is_final_and_the_delivery_is_a_dead_letter_to_replay(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/b", 400, 200), ["#"])
    sent = event()
    sender = sender_for(store)
    await store.take(sent)
    assert await sender.run_once() == 1
    await clock.advance(10**5)
    assert await sender.run_once() == 0, "a 400 is not retried"
    dead_letters = store.deliveries.dead_letters()
    [dead] = await dead_letters.list(group=endpoint.id)
    assert (dead.event_id, dead.error_message, dead.attempts) == (sent.id, "HTTP 400", 1)
    await dead_letters.replay(dead.id)
    assert await sender.run_once() == 1
    await sender.stop()
    assert await dead_letters.list() == []
    [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert delivery.state == "delivered"
    assert [r.headers["webhook-id"] for r in receiver.to("/b")] == [sent.id, sent.id]


async def test_410_disables_the_endpoint_and_its_deliveries_wait_for_enable(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/g", 410, 200), ["#"])
    other = await store.endpoints.add("globex", receiver.script("/ok", 200), ["#"])
    sender = sender_for(store)
    await store.take(event())
    assert await sender.run_once() == 2
    disabled = await store.endpoints.get(endpoint.id)
    assert not disabled.enabled
    assert disabled.disabled_reason == "the receiver answered 410 Gone"
    await store.take(event())
    await clock.advance(10**5)
    assert await sender.run_once() == 1, "only the enabled endpoint gets the second event"
    await store.endpoints.enable(endpoint.id)
    assert await sender.run_once() == 1
    await sender.stop()
    states = sorted(d.state for d in await store.deliveries.list(endpoint_id=endpoint.id))
    assert states == ["dead", "delivered"]
    assert len(receiver.to("/ok")) == 2
    assert (await store.endpoints.get(other.id)).enabled


async def test_a_timeout_is_retried(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/slow", HANG, 200), ["#"])
    sender = sender_for(store, timeout=0.3, lease=5.0)
    await store.take(event())
    assert await sender.run_once() == 1
    [waiting] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert (waiting.state, waiting.attempts) == ("pending", 1)
    assert waiting.last_error == "no answer within 0.3s"
    assert waiting.last_status is None
    await clock.advance(5)
    assert await sender.run_once() == 1
    await sender.stop()
    [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert delivery.state == "delivered"
    assert len(receiver.to("/slow")) == 2


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    store: WebhookStore, receiver: Receiver
) -> None:
    target = receiver.script("/elsewhere", 200)
    endpoint = await store.endpoints.add(
        "acme", receiver.script("/moved", (307, {"location": target})), ["#"]
    )
    sender = sender_for(store)
    await store.take(event())
    assert await sender.run_once() == 1
    await sender.stop()
    assert receiver.to("/elsewhere") == []
    [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert delivery.state == "pending"
    assert delivery.last_status == 307
    assert delivery.last_error == "HTTP 307: a redirect (not followed)"


async def test_after_the_last_attempt_the_delivery_is_dead(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/down", 503), ["#"])
    sender = sender_for(store, schedule=RetrySchedule(delays=(0, 1), jitter=0))
    await store.take(event())
    assert await sender.run_once() == 1
    await clock.advance(1)
    assert await sender.run_once() == 1
    await clock.advance(10**6)
    assert await sender.run_once() == 0
    await sender.stop()
    [dead] = await store.deliveries.dead_letters().list()
    assert (dead.group, dead.attempts, dead.error_message) == (endpoint.id, 2, "HTTP 503")
    assert len(receiver.to("/down")) == 2


async def test_an_event_taken_in_twice_is_delivered_once(
    store: WebhookStore, receiver: Receiver
) -> None:
    await store.endpoints.add("acme", receiver.script("/once", 200), ["order.*"])
    await store.endpoints.add("initech", receiver.script("/once", 200), ["order.placed"])
    await store.endpoints.add("globex", receiver.script("/never", 200), ["invoice.*"])
    sent = event()
    assert await store.take(sent) == 2
    assert await store.take(sent) == 0
    sender = sender_for(store)
    assert await sender.run_once() == 2
    await sender.stop()
    assert len(receiver.to("/once")) == 2
    assert receiver.to("/never") == []


def test_the_schedule_is_the_standard_one_with_jitter_within_bounds() -> None:
    schedule = RetrySchedule()
    assert schedule.delays == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert schedule.attempts == 10
    assert schedule.next_delay(10) is None
    low = RetrySchedule(random=lambda: 0.0).next_delay(2)
    high = RetrySchedule(random=lambda: 0.9999).next_delay(2)
    assert low == pytest.approx(270)
    assert high == pytest.approx(330, abs=0.01)
    assert schedule.horizon == pytest.approx(sum(schedule.delays) * 1.1)


async def test_delivered_rows_and_the_log_are_pruned_after_the_retention_dead_ones_stay(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    fine = await store.endpoints.add("acme", receiver.script("/fine", 200), ["#"])
    refusing = await store.endpoints.add("globex", receiver.script("/refusing", 400), ["#"])
    await store.take(event())
    sender = sender_for(store, retention=86400.0)
    assert await sender.run_once() == 2
    await sender.stop()
    await clock.advance(86400 - 1)
    kept = sender_for(store, retention=86400.0)  # a sender sweeps in its first round
    assert await kept.run_once() == 0
    await kept.stop()
    assert len(await store.deliveries.list(endpoint_id=fine.id)) == 1
    await clock.advance(2)
    later = sender_for(store, retention=86400.0)
    assert await later.run_once() == 0
    await later.stop()
    assert await store.deliveries.list(endpoint_id=fine.id) == []
    assert await store.deliveries.attempts() == []
    [dead] = await store.deliveries.list(endpoint_id=refusing.id)
    assert dead.state == "dead", "a dead letter stays until it is replayed or purged"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (301, Outcome.RETRY),
        (400, Outcome.FINAL),
        (401, Outcome.FINAL),
        (404, Outcome.FINAL),
        (408, Outcome.RETRY),
        (410, Outcome.GONE),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_what_each_status_means(status: int, outcome: Outcome) -> None:
    assert judge(status).outcome is outcome
    assert judge(status).throttled is (status == 429)


def test_retry_after_in_seconds_or_as_an_http_date_capped_at_a_day() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert retry_after({"Retry-After": "30"}, now) == 30
    assert retry_after({"retry-after": "Tue, 14 Nov 2023 22:15:20 GMT"}, now) == 120
    assert retry_after({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, now) == 0
    assert retry_after({"retry-after": str(10**9)}, now) == MAX_RETRY_AFTER
    assert retry_after({"retry-after": "soon"}, now) is None
    assert retry_after({}, now) is None


async def test_a_408_without_retry_after_waits_for_the_schedule(
    store: WebhookStore, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await store.endpoints.add("acme", receiver.script("/late", 408, 200), ["#"])
    sender = sender_for(store)
    await store.take(event())
    assert await sender.run_once() == 1
    await clock.advance(4.9)
    assert await sender.run_once() == 0
    await clock.advance(0.1)
    assert await sender.run_once() == 1
    await sender.stop()
    [delivery] = await store.deliveries.list(endpoint_id=endpoint.id)
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
