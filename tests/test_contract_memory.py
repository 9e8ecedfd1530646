"""The broker conformance suite against the in-memory broker, with a fake clock for delays."""

from __future__ import annotations

from eventbus.brokers.memory import MemoryBroker
from eventbus.clock import FakeClock
from eventbus.testing import BrokerContract
from eventbus.testing.telemetry import TelemetryContract
from eventbus.types import Broker


class TestMemoryBrokerContract(BrokerContract, TelemetryContract):
    timeout = 5.0

    def make_clock(self) -> FakeClock:
        return FakeClock()

    async def make_broker(self) -> Broker:
        return MemoryBroker.named(self.ns, clock=self.clock)
