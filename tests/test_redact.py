"""Passwords and tokens never appear in what eventbus logs or raises: the redaction helpers,
then the errors of ``from_url`` and of the memory broker. Each network adapter is checked
against a closed port and its real server in ``tests/brokers/test_observability.py``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from eventbus import ConfigurationError, EventBus
from eventbus.brokers import from_url
from eventbus.redact import redact_options, redact_text, redact_url

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://app:s3cret@cache:6379/0", "redis://app:***@cache:6379/0"),
        ("redis://:s3cret@cache:6379", "redis://:***@cache:6379"),
        ("amqps://app:s3cret@mq.example.com/prod", "amqps://app:***@mq.example.com/prod"),
        ("amqp://app:p%40ss%2Fw0rd@mq:5672/", "amqp://app:***@mq:5672/"),
        ("amqp://app:p@ss@mq:5672/", "amqp://app:***@mq:5672/"),  # an unescaped "@"
        ("amqp://app:pa/ss@mq:5672/vh", "amqp://app:***@mq:5672/vh"),  # an unescaped "/"
        ("kafka://u:s3cret@a:9092,b:9092", "kafka://u:***@a:9092,b:9092"),
        (
            "rediss://cache:6380/0?ssl_password=s3cret&db=1&token=s3cret",
            "rediss://cache:6380/0?ssl_password=***&db=1&token=***",
        ),
        ("redis://h/0?sasl_plain_password=s3cret#x", "redis://h/0?sasl_plain_password=***#x"),
        ("redis://h/0?Access_Key=s3cret", "redis://h/0?Access_Key=***"),
        ("redis://user@cache:6379/0", "redis://user@cache:6379/0"),  # a user, no password
        ("memory://", "memory://"),
        ("kafka://127.0.0.1:9092", "kafka://127.0.0.1:9092"),
        ("amqp://app:s3cret@[::1/", "amqp://app:***@[::1/"),  # malformed, still redacted
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_options_hides_secret_values_at_any_depth() -> None:
    options = {
        "sasl_plain_username": "app",
        "sasl_plain_password": SECRET,
        "ssl_keyfile_password": SECRET,
        "consumer_options": {"client_secret": SECRET, "max_poll_records": 10},
        "url": f"redis://app:{SECRET}@h",
        "password": None,  # nothing to hide: shown as it is
    }
    assert redact_options(options) == {
        "sasl_plain_username": "app",
        "sasl_plain_password": "***",
        "ssl_keyfile_password": "***",
        "consumer_options": {"client_secret": "***", "max_poll_records": 10},
        "url": "redis://app:***@h",
        "password": None,
    }


def test_redact_text_redacts_every_url_in_a_message() -> None:
    message = f"tried amqp://a:{SECRET}@h1/ then 'redis://b:{SECRET}@h2:1/0', both down"
    assert redact_text(message) == "tried amqp://a:***@h1/ then 'redis://b:***@h2:1/0', both down"


def messages_of(exc: BaseException) -> Iterator[str]:
    """``str`` and ``repr`` of ``exc`` and of every error in its cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        current = current.__cause__ or current.__context__


@pytest.mark.parametrize(
    "url",
    [
        f"bogus://app:{SECRET}@h:1",  # an unknown scheme
        f"redis://app:{SECRET}@[::1/0",  # not parseable at all
        f"kafka://app:{SECRET}@127.0.0.1:1",  # credentials that kafka:// URLs cannot carry
        f"memory://app:{SECRET}@x?unknown=1",  # an unknown memory:// option
    ],
)
def test_from_url_errors_never_show_the_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigurationError) as raised:
        from_url(url)
    assert "***" in str(raised.value) or "unknown" in str(raised.value)
    assert not any(SECRET in text for text in messages_of(raised.value))
    assert SECRET not in caplog.text


def test_a_bus_on_an_unknown_url_does_not_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        EventBus(f"redis+bad://app:{SECRET}@h:1")
    assert "redis+bad://app:***@h:1" in str(raised.value)
    assert not any(SECRET in text for text in messages_of(raised.value))
