"""eventbus: services talking through events, with the hard parts built in.

Declare events as pydantic models, register handlers with ``@router.subscribe(...)``, publish;
the same code runs on Kafka, RabbitMQ, Redis Streams or the in-memory broker.
"""

from eventbus.bus import EventBus
from eventbus.clock import FakeClock, SystemClock
from eventbus.context import Context
from eventbus.deadletters import DeadLetter, DeadLetterStore
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerUnavailable,
    BusNotStarted,
    ConcurrencyError,
    ConfigurationError,
    DeadLetterNotFound,
    DecodeError,
    EventBusError,
    HandlerTimeout,
    NoHandlerError,
    NonRetryableError,
    PayloadValidationError,
    PermanentError,
    PublishError,
    RetriesExhausted,
    RetryLater,
    TransientError,
)
from eventbus.event import Event
from eventbus.router import Router, Subscription
from eventbus.types import Broker, Capabilities, Delivery, Middleware, Next, PublishMiddleware

__version__ = "0.1.0"

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "BusNotStarted",
    "Capabilities",
    "ConcurrencyError",
    "ConfigurationError",
    "Context",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterStore",
    "DecodeError",
    "Delivery",
    "Envelope",
    "Event",
    "EventBus",
    "EventBusError",
    "FakeClock",
    "HandlerTimeout",
    "Middleware",
    "Next",
    "NoHandlerError",
    "NonRetryableError",
    "PayloadValidationError",
    "PermanentError",
    "PublishError",
    "PublishMiddleware",
    "RetriesExhausted",
    "RetryLater",
    "Router",
    "Subscription",
    "SystemClock",
    "TransientError",
]
