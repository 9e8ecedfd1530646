"""eventbus: services talking through events, with the hard parts built in.

Declare events as pydantic models, register handlers with ``@router.subscribe(...)``, publish;
the same code runs on Kafka, RabbitMQ, Redis Streams or the in-memory broker.
"""

from eventbus.bus import EventBus
from eventbus.context import Context, Middleware, Next
from eventbus.deadletters import DeadLetterRecord, DeadLetterStore
from eventbus.envelope import Envelope
from eventbus.errors import (
    AggregateNotFound,
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
from eventbus.health import Health, SubscriptionHealth
from eventbus.router import Router
from eventbus.types import (
    Broker,
    Capabilities,
    Clock,
    Consumer,
    Delivery,
    OutboxStage,
    PublishMiddleware,
    PublishNext,
    SubscriptionView,
)

__version__ = "0.1.0"

__all__ = [
    "AggregateNotFound",
    "Broker",
    "BrokerUnavailable",
    "BusNotStarted",
    "Capabilities",
    "Clock",
    "ConcurrencyError",
    "ConfigurationError",
    "Consumer",
    "Context",
    "DeadLetterNotFound",
    "DeadLetterRecord",
    "DeadLetterStore",
    "DecodeError",
    "Delivery",
    "Envelope",
    "Event",
    "EventBus",
    "EventBusError",
    "HandlerTimeout",
    "Health",
    "Middleware",
    "Next",
    "NoHandlerError",
    "NonRetryableError",
    "OutboxStage",
    "PayloadValidationError",
    "PermanentError",
    "PublishError",
    "PublishMiddleware",
    "PublishNext",
    "RetriesExhausted",
    "RetryLater",
    "Router",
    "SubscriptionHealth",
    "SubscriptionView",
    "TransientError",
]
