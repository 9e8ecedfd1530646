"""One relay process of a trial: ``python -m bench.outbox.worker IMPL BROKER ORDERING ...``.

It connects (database, broker), warms up — one event published straight to the trial's
channel, one query on the outbox table — prints ``{"ready": true}`` and waits for a line on
stdin. Then it relays until nothing is pending: ``run_once()`` in a loop; when a call publishes
nothing while rows are still pending (another relay holds them, or holds their keys), it waits
``IDLE_PAUSE`` and tries again. It prints one JSON line: what it published, its CPU time (user
+ system) while relaying, and how often it had to wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sys
import time
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import UserCreated, make_event
from bench.outbox.common import bus_options, make_engine, outbox_for, pending_left
from eventbus import EventBus
from eventbus.outbox import Outbox, OutboxRelay

IDLE_PAUSE = 0.01
"""Seconds a relay that found nothing to publish waits before it looks again."""


class Relay(Protocol):
    async def run_once(self) -> int: ...


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drain(relay: Relay, engine: AsyncEngine, outbox: Outbox) -> dict[str, Any]:
    """Relay until no row is pending; what this relay published and how often it waited."""
    published = waits = 0
    query = pending_left(outbox.table)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    while True:
        count = await relay.run_once()
        published += count
        if count:
            continue
        async with engine.connect() as connection:
            if not (await connection.execute(query)).scalar():
                break
        waits += 1
        await asyncio.sleep(IDLE_PAUSE)
    return {
        "published": published,
        "waits": waits,
        "cpu_s": cpu_seconds() - cpu0,
        "relay_s": time.perf_counter() - t0,
    }


async def wait_for_go() -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


async def warm_up_database(engine: AsyncEngine, outbox: Outbox) -> None:
    async with engine.connect() as connection:
        await connection.execute(pending_left(outbox.table))


async def relay_when_told(relay: Relay, engine: AsyncEngine, outbox: Outbox) -> None:
    """Say ready, wait for the go, relay, and report at once (before anything is closed)."""
    print(json.dumps({"ready": True}), flush=True)
    await wait_for_go()
    result = await drain(relay, engine, outbox)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


async def run_eventbus(args: argparse.Namespace, engine: AsyncEngine, outbox: Outbox) -> None:
    if args.broker == "memory":  # no subscriber: the memory broker drops what it routes
        logging.getLogger("eventbus.memory").setLevel(logging.ERROR)
    UserCreated.event_topic = args.channel
    url = args.broker_url
    bus = EventBus(url, service="bench", outbox=outbox, **bus_options(args.broker, args.channel))
    async with bus:
        relay = OutboxRelay(
            engine, bus, outbox=outbox, ordering=args.ordering, batch_size=args.batch_size
        )
        await bus.publish(make_event(-1), key="warm-up")
        await warm_up_database(engine, outbox)
        await relay_when_told(relay, engine, outbox)


async def run_baseline(args: argparse.Namespace, engine: AsyncEngine, outbox: Outbox) -> None:
    from bench.outbox.baseline import PUBLISHERS, HandWrittenRelay  # its clients only

    publisher = PUBLISHERS[args.broker](args.broker_url)
    try:
        await publisher.start(args.channel)
        relay = HandWrittenRelay(engine, outbox.table, publisher, args.batch_size)
        await warm_up_database(engine, outbox)
        await relay_when_told(relay, engine, outbox)
    finally:
        await publisher.close()


async def main(args: argparse.Namespace) -> None:
    engine = make_engine(args.database)
    outbox = outbox_for(args.tables)
    try:
        run = run_eventbus if args.impl == "eventbus" else run_baseline
        await run(args, engine, outbox)
    finally:
        await engine.dispose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("impl", choices=("eventbus", "baseline"))
    parser.add_argument("broker")
    parser.add_argument("ordering", choices=("key", "none"))
    parser.add_argument("--database", required=True, help="SQLAlchemy URL")
    parser.add_argument("--tables", required=True, help="the name in bench_outbox_<name>")
    parser.add_argument("--channel", required=True)
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
