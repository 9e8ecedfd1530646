"""Event models: type names, versions, destinations, immutability."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eventbus import ConfigurationError, Event


class UserRegistered(Event):
    user_id: str


class UserCreated(Event):
    event_type = "auth.user.created"
    event_version = 2
    event_topic = "user-events"
    user_id: str


def test_type_name_defaults_to_the_class_name() -> None:
    assert UserRegistered.event_type == "UserRegistered"
    assert UserRegistered.event_version == 1
    assert UserRegistered.destination() == "UserRegistered"


def test_type_version_and_topic_can_be_set() -> None:
    assert UserCreated.event_type == "auth.user.created"
    assert UserCreated.event_version == 2
    assert UserCreated.destination() == "user-events"


def test_subclasses_get_their_own_default_name() -> None:
    class Special(UserRegistered):
        pass

    assert Special.event_type == "Special"


def test_events_are_immutable_and_strict() -> None:
    event = UserRegistered(user_id="u1")
    with pytest.raises(ValidationError):
        event.user_id = "u2"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        UserRegistered(user_id="u1", unexpected=1)  # type: ignore[call-arg]


def test_bad_type_names_and_versions_fail_at_class_creation() -> None:
    with pytest.raises(ConfigurationError, match="invalid event type 'has space'"):

        class Bad(Event):
            event_type = "has space"

    with pytest.raises(ConfigurationError, match="event_version must be a positive integer"):

        class Worse(Event):
            event_version = 0
