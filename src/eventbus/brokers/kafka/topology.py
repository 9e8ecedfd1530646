"""What the adapter puts on Kafka besides the events' own topics, and how it configures aiokafka.

**Names.** A destination is a topic and must be a name Kafka accepts (:func:`check_topic`).
Each subscription's group has retry topics of its own, ``__eventbus.retry.{group}.{topic}.
{tier}ms`` (:func:`retry_topic`), read in a Kafka group of their own named like them without
the tier, ``__eventbus.retry.{group}.{topic}`` (:func:`retry_group`), and each group has a
dead-letter topic, ``__eventbus.dlq.{group}`` (:func:`dlq_topic`). Characters Kafka does not
allow, and the dots of group and topic, are replaced there, with a short hash of the original
when that changed it (or it was long), so two names never meet. Names starting with ``__``
are internal and never match a pattern.

**Configs.** :class:`Settings` is every option of the adapter, checked once at construction,
and the aiokafka configurations derived from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from eventbus.brokers.kafka.partitioner import KeyPartitioner
from eventbus.errors import ConfigurationError
from eventbus.topics import pattern_regex

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DLQ_TOPICS",
    "INTERNAL",
    "SECURITY_OPTIONS",
    "Settings",
    "check_topic",
    "dlq_topic",
    "kafka_group",
    "retry_group",
    "retry_topic",
    "subscription_regex",
]

INTERNAL = "__eventbus."
DLQ_TOPICS = INTERNAL + "dlq."
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""Payload limit: with its headers a record then fits Kafka's default 1 MiB request and
``message.max.bytes``."""
_KAFKA_REQUEST_SIZE = 1_048_576  # aiokafka's (and Kafka's) default max_request_size
_HEADROOM = 64 * 1024  # the CloudEvents headers and the record framing, beside the payload
SECURITY_OPTIONS = frozenset(
    {
        "client_id",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)
"""The top-level options, applied to the producer and every consumer alike."""
_OURS = frozenset({"group_id", "enable_auto_commit", "bootstrap_servers"})


# ---------------------------------------------------------------------------- names
def _part(name: str) -> str:
    """``name`` as part of a topic name: unsafe characters replaced, made unique by a hash."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name.replace(".", "-"))
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{safe[:80]}-{digest}" if safe != name.replace(".", "-") or len(safe) > 80 else safe


def retry_group(group: str, topic: str) -> str:
    """The Kafka group that reads the retry topics of ``group``'s subscription to ``topic``
    (or pattern): their common name, without the tier."""
    return f"{INTERNAL}retry.{_part(group)}.{_part(topic)}"


def retry_topic(group: str, topic: str, tier: float) -> str:
    """The retry topic of ``group``'s subscription to ``topic`` (or pattern) for ``tier`` s."""
    return f"{retry_group(group, topic)}.{round(tier * 1000)}ms"


def dlq_topic(group: str) -> str:
    """``group``'s dead-letter topic."""
    return f"{DLQ_TOPICS}{_part(group)}"


def check_topic(topic: str) -> str:
    """``topic`` if Kafka can hold it, else a :class:`ConfigurationError` naming the fix."""
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise ConfigurationError(
            f"{topic!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-', at most "
            "249); give the event class an event_topic = '...' that is one"
        )
    return topic


def kafka_group(group: str, topic: str, is_pattern: bool) -> str:
    """The Kafka group of a subscription.

    Kafka gives each partition to one member of a group; a pattern's topics may overlap
    another subscription's in the same group, so a pattern gets a Kafka group of its own.
    """
    return f"{group}:{topic}" if is_pattern else group


def subscription_regex(pattern: str) -> str:
    """What a pattern subscription's main consumer subscribes to: the topics the pattern
    matches, by the one grammar of :mod:`eventbus.topics`, internal ``__`` topics excluded
    (its retry topics are read by a consumer of their own)."""
    return pattern_regex(pattern, exclude_prefix="__")


# ---------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class Settings:
    """The adapter's options, checked (:meth:`build`), and the client configs made of them."""

    bootstrap_servers: list[str]
    common: Mapping[str, Any]
    """The security options and ``client_id``: producer and consumers alike."""
    producer_options: Mapping[str, Any]
    consumer_options: Mapping[str, Any]
    retry_tiers: tuple[float, ...]
    """Sorted, with tier 0."""
    nack_delay: float
    retry_poll_interval: float
    join_timeout: float
    revoke_timeout: float
    max_request_size: int
    max_records: int | None
    """Records per fetch handed to the bus: aiokafka's ``max_poll_records`` when given."""

    @classmethod
    def build(
        cls,
        bootstrap_servers: str | Sequence[str],
        *,
        producer_options: Mapping[str, Any] | None,
        consumer_options: Mapping[str, Any] | None,
        retry_tiers: Sequence[float],
        nack_delay: float,
        retry_poll_interval: float,
        join_timeout: float,
        revoke_timeout: float,
        max_message_bytes: int,
        common: Mapping[str, Any],
    ) -> Settings:
        """The settings, or a :class:`ConfigurationError` for the first option that is wrong."""
        _check_options(common, consumer_options or {})
        _check_delays(retry_tiers, nack_delay, join_timeout, revoke_timeout, retry_poll_interval)
        # Room for the payload limit plus the CloudEvents headers and the record framing.
        request_size = max(_KAFKA_REQUEST_SIZE, max_message_bytes + _HEADROOM)
        producer = {"acks": "all", "max_request_size": request_size, **(producer_options or {})}
        consumer = dict(consumer_options or {})
        return cls(
            bootstrap_servers=_servers(bootstrap_servers),
            common=dict(common),
            producer_options=producer,
            consumer_options=consumer,
            retry_tiers=tuple(sorted({0.0, *map(float, retry_tiers)})),
            nack_delay=nack_delay,
            retry_poll_interval=retry_poll_interval,
            join_timeout=join_timeout,
            revoke_timeout=revoke_timeout,
            max_request_size=producer["max_request_size"],
            max_records=consumer.get("max_poll_records", 50),
        )

    def producer_config(self) -> dict[str, Any]:
        """The producer's: the :class:`~.partitioner.KeyPartitioner` unless ``producer_options``
        name a ``partitioner`` (it places keys where aiokafka's own would, faster)."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            **self.common,
            "partitioner": KeyPartitioner(),
            **self.producer_options,
        }

    def consumer_config(self, **overrides: Any) -> dict[str, Any]:
        """A consumer's: new groups start at the earliest offset (so an event published right
        after ``bus.start()`` is not missed) unless ``consumer_options`` say otherwise."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            **self.common,
            "auto_offset_reset": "earliest",
            **self.consumer_options,
            **overrides,
        }

    def tier(self, delay: float) -> float:
        """The retry tier a delay goes to: the largest not above it."""
        return max(t for t in self.retry_tiers if t <= max(delay, 0.0))

    def retry_topics(self, group: str, topic: str) -> list[str]:
        """The retry topics of ``group``'s subscription to ``topic``, one per tier."""
        return [retry_topic(group, topic, tier) for tier in self.retry_tiers]


def _check_options(common: Mapping[str, Any], consumer_options: Mapping[str, Any]) -> None:
    unknown = sorted(set(common) - SECURITY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown Kafka option(s) {unknown}: pass producer settings in "
            "producer_options={...} and consumer settings in consumer_options={...}; "
            f"top-level options are {sorted(SECURITY_OPTIONS)}"
        )
    clash = sorted(_OURS & set(consumer_options))
    if clash:
        raise ConfigurationError(
            f"consumer_options may not set {clash}: the group is the subscription's group, "
            "and offsets are committed by the adapter after handling"
        )


def _check_delays(retry_tiers: Sequence[float], nack_delay: float, *positive: float) -> None:
    if any(t < 0 for t in retry_tiers) or nack_delay < 0 or min(positive) <= 0:
        raise ConfigurationError(
            "retry_tiers and nack_delay must be >= 0, timeouts and retry_poll_interval > 0"
        )


def _servers(bootstrap_servers: str | Sequence[str]) -> list[str]:
    servers = (
        bootstrap_servers.split(",") if isinstance(bootstrap_servers, str) else bootstrap_servers
    )
    stripped = [s.strip() for s in servers if s.strip()]
    if not stripped:
        raise ConfigurationError("give at least one broker: kafka://host:9092")
    return stripped
