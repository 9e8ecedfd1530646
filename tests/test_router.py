"""Subscriptions: topic patterns (AMQP semantics), handler signatures, configuration errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import ConfigurationError, Context, Envelope, Event, EventBus, Router
from eventbus.topics import is_pattern, topic_matches


class UserRegistered(Event):
    user_id: str


class OrderPlaced(Event):
    event_type = "shop.order.placed"
    order_id: str


word = st.text(alphabet="abcxyz019_-", min_size=1, max_size=4)
topics = st.lists(word, min_size=1, max_size=6)


@given(topics)
def test_a_literal_pattern_matches_only_itself(words: list[str]) -> None:
    topic = ".".join(words)
    assert topic_matches(topic, topic)
    assert not topic_matches(topic, topic + ".more")
    assert not is_pattern(topic)


@given(topics, st.data())
def test_star_replaces_exactly_one_word(words: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(words) - 1))
    pattern = ".".join([*words[:i], "*", *words[i + 1 :]])
    assert topic_matches(pattern, ".".join(words))
    assert not topic_matches(pattern, ".".join(words[:i] + words[i + 1 :]) or "x.y.z.w.v.u.t")
    assert not topic_matches(pattern, ".".join([*words, "extra"]))


@given(topics, st.data())
def test_hash_replaces_any_run_of_words(words: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(words)))
    j = data.draw(st.integers(i, len(words)))
    pattern = ".".join([*words[:i], "#", *words[j:]])
    assert topic_matches(pattern, ".".join(words))
    assert topic_matches("#", ".".join(words))


@given(st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=5), topics)
def test_matching_agrees_with_a_brute_force_definition(
    pattern: list[str], words: list[str]
) -> None:
    def brute(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == "#":
            return any(brute(p[1:], t[k:]) for k in range(len(t) + 1))
        return bool(t) and p[0] in ("*", t[0]) and brute(p[1:], t[1:])

    assert topic_matches(".".join(pattern), ".".join(words)) == brute(pattern, words)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("auth.#", "auth", True),
        ("auth.#", "auth.user.profile.updated", True),
        ("auth.user.*", "auth.user.created", True),
        ("auth.user.*", "auth.user.profile.updated", False),
        ("auth.user.*", "auth.user", False),
        ("#.created", "auth.user.created", True),
        ("*.user.#", "auth.user", True),
        ("auth.*.#", "auth", False),
    ],
)
def test_documented_examples(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


def test_decorator_returns_the_function_unchanged() -> None:
    router = Router()

    async def handler(event: UserRegistered) -> None: ...

    assert router.subscribe(UserRegistered)(handler) is handler
    sub = router.subscriptions[0]
    assert (sub.topic, sub.types, sub.handler.model) == (
        "UserRegistered",
        frozenset({"UserRegistered"}),
        UserRegistered,
    )


def test_type_string_and_annotation_agree() -> None:
    router = Router()

    @router.subscribe("shop.order.placed", group="billing", concurrency=4)
    async def bill(event: OrderPlaced, ctx: Context) -> None: ...

    sub = router.subscriptions[0]
    assert sub.handler.model is OrderPlaced
    assert sub.handler.wants_context
    assert (sub.group, sub.concurrency) == ("billing", 4)


def test_patterns_take_the_envelope() -> None:
    router = Router()

    @router.subscribe("shop.#")
    async def audit(envelope: Envelope) -> None: ...

    sub = router.subscriptions[0]
    assert sub.is_pattern
    assert sub.accepts("shop.order.placed")
    assert not sub.accepts("auth.user.created")


def test_plain_functions_are_accepted_and_run_in_a_thread() -> None:
    router = Router()

    @router.subscribe(UserRegistered)
    def sync_handler(event: UserRegistered) -> None: ...

    assert router.subscriptions[0].handler.is_async is False


async def _wrong_model(event: UserRegistered) -> None: ...
async def _no_annotation(event) -> None: ...  # type: ignore[no-untyped-def]
async def _bad_ctx(event: UserRegistered, ctx: int) -> None: ...
async def _too_many(event: UserRegistered, ctx: Context, other: int) -> None: ...
async def _generator(event: UserRegistered) -> Any:
    yield None


async def _keyword_only(*, event: UserRegistered) -> None: ...


@pytest.mark.parametrize(
    ("target", "handler", "message"),
    [
        ("shop.order.placed", _wrong_model, "subscribe to UserRegistered instead"),
        ("UserRegistered", _no_annotation, "annotate the first parameter"),
        (UserRegistered, _bad_ctx, "must be annotated Context"),
        (UserRegistered, _too_many, r"must take \(event\) or \(event, ctx: Context\)"),
        (UserRegistered, _generator, "generator"),
        (UserRegistered, _keyword_only, r"signature is \(\*, event: .*keyword-only: event"),
        ("shop.#", _wrong_model, "take `envelope: Envelope`"),
        ("bad name!", _wrong_model, "invalid subscription target"),
        (42, _wrong_model, "takes an Event subclass"),
    ],
)
def test_bad_handlers_fail_at_registration(target: Any, handler: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Router().subscribe(target)(handler)


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_concurrency_must_be_a_positive_integer(concurrency: Any) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        Router().subscribe(UserRegistered, concurrency=concurrency)


@pytest.mark.anyio
async def test_an_unannotated_event_parameter_takes_the_subscribed_class() -> None:
    """The behaviour docs/handlers.md describes: an Event class says what to validate into."""
    router, got = Router(), list[Any]()

    @router.subscribe(UserRegistered)
    async def handle(event, ctx: Context) -> None:  # type: ignore[no-untyped-def]
        got.append(event)

    assert router.subscriptions[0].handler.model is UserRegistered
    async with EventBus("memory://", routers=[router]) as bus:
        await bus.publish(UserRegistered(user_id="u1"))
        await bus.drain()
    assert got == [UserRegistered(user_id="u1")]


@pytest.mark.anyio
async def test_a_router_in_a_running_bus_refuses_new_subscriptions() -> None:
    router = Router()
    router.subscribe(UserRegistered, group="first")(_handled)
    bus = EventBus("memory://", routers=[router])
    async with bus:
        with pytest.raises(ConfigurationError, match="included in a running bus"):
            router.subscribe(UserRegistered, group="late")
        with pytest.raises(ConfigurationError, match="before the bus starts"):
            bus.subscribe(UserRegistered, group="late")
    router.subscribe(UserRegistered, group="after-stop")(_handled)  # stopped: allowed
    assert len(router.subscriptions) == 2


async def _handled(event: UserRegistered) -> None: ...


class _CallableHandler:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, event: UserRegistered, ctx: Context) -> None:
        self.seen.append(event.user_id)


@pytest.mark.anyio
async def test_a_callable_object_is_a_handler() -> None:
    router, handler = Router(), _CallableHandler()
    router.subscribe(UserRegistered)(handler)
    [subscription] = router.subscriptions
    assert subscription.handler.wants_context
    assert subscription.name.endswith("_CallableHandler")
    async with EventBus("memory://", service="svc", routers=[router]) as bus:
        assert [s.group for s in bus.subscriptions] == ["svc._callablehandler"]
        await bus.publish(UserRegistered(user_id="u1"))
        await bus.drain()
    assert handler.seen == ["u1"]
