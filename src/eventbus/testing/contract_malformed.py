"""The bad-input part of the conformance suite: nothing a producer sends stops, stalls or is lost.

Messages are put on the subscription's destination with the adapter's raw producer
(``send_raw``), as an operator or a buggy producer would: the inputs that have broken consumers
before, then messages drawn by Hypothesis (random bytes, random JSON, CloudEvents with random
attribute values and types, random header maps), each batch followed by a good event. Every
message must end in the dead-letter queue with its bytes intact, or be handled where it is in
fact a valid event; the good event must be handled, nothing may stay unsettled, and stopping
the bus must not raise. Hypothesis is needed (``pip install hypothesis``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from eventbus.envelope import STRUCTURED_CONTENT_TYPE, Envelope, decode
from eventbus.errors import DecodeError
from eventbus.router import Router
from eventbus.testing._contract_base import ContractBase, collect_envelopes

__all__ = ["MalformedInputContract", "hostile_inputs"]

Message = tuple[bytes, dict[str, Any]]
_STRUCTURED = {"content-type": STRUCTURED_CONTENT_TYPE}


def hostile_inputs(event_type: str) -> dict[str, Message]:
    """Inputs that real producers send sooner or later, by what is wrong with them."""
    base = {"specversion": "1.0", "source": "a-foreign-producer", "type": event_type}

    def structured(**attributes: Any) -> Message:
        return json.dumps({**base, **attributes}).encode(), dict(_STRUCTURED)

    deep = b"[" * 50_000 + b"]" * 50_000
    return {
        "time 1e20": structured(id="h-time-float", time=1e20, data={"n": 1}),
        "time 2**62": structured(id="h-time-int", time=2**62, data={"n": 1}),
        "data with a lone surrogate": (
            json.dumps({**base, "id": "h-surrogate"})[:-1].encode() + b', "data": "\\ud800"}',
            dict(_STRUCTURED),
        ),
        "datacontenttype not a string": structured(
            id="h-content-type", datacontenttype=5, data={"n": 1}
        ),
        "JSON nested 50,000 deep": (
            json.dumps({**base, "id": "h-deep"})[:-1].encode() + b', "data": ' + deep + b"}",
            dict(_STRUCTURED),
        ),
        "binary mode, time a huge integer": (
            b'{"n": 1}',
            {
                "ce-specversion": "1.0",
                "ce-id": "h-binary-time",
                "ce-source": "a-foreign-producer",
                "ce-type": event_type,
                "ce-time": 2**62,
                "content-type": "application/json",
            },
        ),
    }


class MalformedInputContract(ContractBase):
    """Bad input on every adapter alike: dead-lettered with its bytes, never a stall."""

    malformed_examples = 20
    """How many Hypothesis-drawn messages the generated test injects."""

    async def test_hostile_inputs_are_dead_lettered_and_the_next_event_flows(self) -> None:
        inputs = hostile_inputs(self.event().event_type)
        await self._inject_and_check(list(inputs.values()), expect_dead=len(inputs))

    async def test_drawn_malformed_messages_never_stop_the_consumer(self) -> None:
        messages = _draw(_malformed(self.event().event_type, self.raw_header_value()), self)
        dead = sum(1 for body, headers in messages if not _decodes(body, headers))
        await self._inject_and_check(messages, expect_dead=dead)

    async def _inject_and_check(self, messages: list[Message], *, expect_dead: int) -> None:
        event_cls, router = self.event(), Router()
        group, destination = f"{self.ns}-bad-input", event_cls.destination()
        got: list[Envelope] = []
        router.subscribe(event_cls, group=group)(collect_envelopes(got))
        async with self.bus(router) as bus:
            self.capability(bus.broker, "dead_letters")
            for body, headers in messages:
                await self.send_raw(bus.broker, destination, body, headers)
            good = await bus.publish(event_cls(n=1))
            await self.wait(lambda: any(e.id == good.id for e in got), "the good event is handled")
            records = await self._dead_letters(bus, group, expect_dead)
            broker = bus.broker
        expected = Counter(body for body, headers in messages if not _decodes(body, headers))
        assert Counter(record.body for record in records) == expected, "a body was changed or lost"
        assert {record.reason for record in records} <= {"undecodable"}
        assert len(got) == len(messages) - expect_dead + 1, "a valid event was not handled"
        assert await self.unsettled(broker, group, destination) == 0


def _decodes(body: bytes, headers: dict[str, Any]) -> bool:
    try:
        decode(headers, body)
    except DecodeError:
        return False
    return True


def _malformed(event_type: str, header_value: Any) -> Any:
    """Random bytes, random JSON, CloudEvents with random attributes, random header maps."""
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=8,
    )
    attributes = st.fixed_dictionaries(
        {"type": st.just(event_type)},
        optional=dict.fromkeys(
            (
                "specversion",
                "id",
                "source",
                "time",
                "datacontenttype",
                "dataversion",
                "data",
                "subject",
                "partitionkey",
            ),
            values,
        ),
    )
    names = st.sampled_from(
        ["ce_id", "ce-id", "ce_source", "ce-specversion", "ce_time", "ce-dataversion", "x-other"]
    ) | st.text("abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=10).filter(
        lambda name: "type" not in name and name != "data"
    )
    headers = st.dictionaries(names, header_value, max_size=5)
    return st.one_of(
        st.tuples(st.binary(max_size=120), st.just({})),
        st.tuples(values.map(lambda v: json.dumps(v).encode()), st.just({})),
        st.tuples(attributes.map(lambda a: json.dumps(a).encode()), st.just(dict(_STRUCTURED))),
        st.tuples(st.binary(max_size=60), headers),
    )


def _draw(strategy: Any, contract: MalformedInputContract) -> list[Message]:
    """``malformed_examples`` messages from ``strategy``, the same ones on every run."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
    except ImportError:  # pragma: no cover - the suite's own environment has it
        pytest.fail("the bad-input contract tests draw their messages with hypothesis: install it")
    drawn: list[Message] = []

    @settings(
        max_examples=contract.malformed_examples,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(message: Message) -> None:
        drawn.append(message)

    collect()
    return drawn
