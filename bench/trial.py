"""One benchmark trial, in a process of its own: ``python -m bench.trial BROKER IMPL MODE``.

Prints one JSON object: the rates, CPU per event and peak RSS of this process (producer and
consumer both run here, so CPU is the whole client's cost), and ``unsettled``: what the
broker still holds as unacknowledged once the implementation has stopped (must be 0). The
channel is fresh for every trial. Before measuring, ``WARMUP`` events go through end to end,
so connections, consumer group joins and caches are ready and every implementation starts
from the same state.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import resource
import statistics
import sys
import time
import uuid
from typing import Any

from bench.common import BATCH, MODES, PUBLISHERS, UserCreated, Workload, make_event, server_url

WARMUP = 100
DEADLINE = 120.0


class Counter:
    """Counts handled events and wakes whoever waits for a total."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.reached = asyncio.Event()

    def __call__(self, event: UserCreated) -> None:
        self.count += 1
        if self.count == self.target:
            self.reached.set()

    async def wait_for(self, total: int, what: str) -> None:
        if self.count < total:
            self.target = total
            self.reached.clear()
            try:
                await asyncio.wait_for(self.reached.wait(), DEADLINE)
            except TimeoutError:
                raise SystemExit(
                    f"{what}: {self.count} of {total} events handled after {DEADLINE}s"
                ) from None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def publish_all(workload: Workload, mode: str, events: list[UserCreated]) -> None:
    if mode == "single":
        for event in events:
            await workload.publish(event)
    elif mode == "batch":
        for start in range(0, len(events), BATCH):
            await workload.publish_batch(events[start : start + BATCH])
    elif mode == "concurrent":

        async def publisher(share: list[UserCreated]) -> None:
            for event in share:
                await workload.publish(event)

        await asyncio.gather(*(publisher(events[i::PUBLISHERS]) for i in range(PUBLISHERS)))
    else:
        raise ValueError(mode)


async def run(broker: str, impl: str, mode: str, events: int) -> dict[str, Any]:
    module = importlib.import_module(f"bench.workloads.{broker}")
    found = {**module.IMPLEMENTATIONS, **getattr(module, "VARIANTS", {})}
    if impl not in found:
        raise SystemExit(f"no implementation {impl!r} for {broker}: {', '.join(found)}")
    cls: type[Workload] = found[impl]
    url = "" if broker == "memory" else server_url(broker)
    counter = Counter()
    workload = cls(url, f"bench-{mode}-{impl}-{uuid.uuid4().hex[:10]}", counter)
    await workload.start()
    result: dict[str, Any] = {}
    try:
        warm = [make_event(-i) for i in range(1, WARMUP + 1)]
        for event in warm:
            await workload.publish(event)
        await counter.wait_for(WARMUP, "warm-up")
        batch = [make_event(i) for i in range(events)]
        gc.collect()
        if mode == "latency":
            result = await measure_latency(workload, counter, batch)
        else:
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            await publish_all(workload, mode, batch)
            published = time.perf_counter()
            await counter.wait_for(WARMUP + events, mode)
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            result = {
                "publish_per_s": events / (published - t0),
                "e2e_per_s": events / elapsed,
                "cpu_us_per_event": cpu / events * 1e6,
            }
    finally:
        try:
            await workload.stop()
            result["unsettled"] = await workload.unsettled()
        finally:
            await workload.cleanup()
    return result


async def measure_latency(
    workload: Workload, counter: Counter, events: list[UserCreated]
) -> dict[str, Any]:
    samples = []
    cpu0 = cpu_seconds()
    for event in events:
        expected = counter.count + 1
        t0 = time.perf_counter()
        await workload.publish(event)
        await counter.wait_for(expected, "latency")
        samples.append(time.perf_counter() - t0)
    cpu = cpu_seconds() - cpu0
    samples.sort()
    return {
        "p50_ms": statistics.median(samples) * 1e3,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3,
        "cpu_us_per_event": cpu / len(events) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("broker")
    parser.add_argument("impl")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(run(args.broker, args.impl, args.mode, args.events))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["events"] = args.events
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
