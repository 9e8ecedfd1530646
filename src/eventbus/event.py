"""The ``Event`` base model.

An event is an immutable pydantic model. Its *type name* — what goes on the wire as the
CloudEvents ``type`` and what subscriptions match — defaults to the class name and can be set
with the ``event_type`` class variable. ``event_version`` is the schema version (default 1),
carried as the ``dataversion`` extension. ``event_topic`` sends several event types to one
destination (all events of an aggregate on ``"user-events"``, ordered by key); by default each
type has a destination of its own, named after the type.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from eventbus.errors import ConfigurationError
from eventbus.topics import validate_type_name

__all__ = ["Event"]


class Event(BaseModel):
    """Base class for events.

    >>> class UserRegistered(Event):
    ...     user_id: str
    >>> UserRegistered.event_type
    'UserRegistered'
    >>> class UserCreated(Event):
    ...     event_type = "auth.user.created"
    ...     event_version = 2
    ...     user_id: str
    """

    # NaN and infinities are written as bare constants, which the bus refuses at publish (JSON
    # has no such numbers); a model that wants them sets ser_json_inf_nan="strings".
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    event_type: ClassVar[str] = "Event"
    event_version: ClassVar[int] = 1
    event_topic: ClassVar[str | None] = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__
        validate_type_name(cls.event_type)
        if not isinstance(cls.event_version, int) or cls.event_version < 1:
            raise ConfigurationError(
                f"{cls.__name__}.event_version must be a positive integer, "
                f"got {cls.event_version!r}"
            )
        if cls.event_topic is not None:
            validate_type_name(cls.event_topic, "event topic")

    @classmethod
    def destination(cls) -> str:
        """Where events of this class are published: ``event_topic`` if set, else the type name."""
        return cls.event_topic or cls.event_type
