"""Publish → handle throughput of the in-memory bus, beside the practical limit.

The limit is a bare ``asyncio.Queue`` loop doing what any bus must do per event: encode the
pydantic model to JSON on publish and validate it back into the model on consume. eventbus runs
its whole path on top of that (envelope, CloudEvents binary encoding and decoding, routing,
the default middleware chain — dead-letter and retry — and ack), so the ratio says what that
costs.

Trials alternate (bare, eventbus, bare, eventbus, …) so both see the same machine; each figure
is the median of ``--runs`` trials, with min and max, and the ratio is computed inside each
repetition. Usage::

    .venv/bin/python bench/bench_memory.py [--events 20000] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from eventbus import Event, EventBus, Router


class UserCreated(Event):
    """About 200 bytes of JSON, like a typical domain event."""

    user_id: str
    email: str
    name: str
    plan: str
    country: str
    referrer: str | None
    marketing_opt_in: bool
    signup_ip: str


def make_event(n: int) -> UserCreated:
    return UserCreated(
        user_id=f"user-{n:08d}",
        email=f"user{n}@example.com",
        name="Ada Lovelace-Byron",
        plan="team-annual",
        country="GB",
        referrer="newsletter-2026-11",
        marketing_opt_in=n % 2 == 0,
        signup_ip="203.0.113.42",
    )


async def bare_queue(events: list[UserCreated]) -> None:
    """The practical limit: JSON encode → asyncio.Queue → pydantic validate → handler."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    done = asyncio.Event()
    handled = 0
    total = len(events)

    async def handler(event: UserCreated) -> None:
        nonlocal handled
        handled += 1
        if handled == total:
            done.set()

    async def consume() -> None:
        while True:
            data = await queue.get()
            await handler(UserCreated.model_validate_json(data))

    consumer = asyncio.ensure_future(consume())
    for event in events:
        queue.put_nowait(event.__pydantic_serializer__.to_json(event))
        await asyncio.sleep(0) if queue.qsize() > 256 else None
    await done.wait()
    consumer.cancel()


async def eventbus_memory(events: list[UserCreated]) -> None:
    """eventbus with its default middleware chain, publishing each event with ``await``."""
    router = Router()
    done = asyncio.Event()
    handled = 0
    total = len(events)

    @router.subscribe(UserCreated, group="bench")
    async def handler(event: UserCreated) -> None:
        nonlocal handled
        handled += 1
        if handled == total:
            done.set()

    async with EventBus("memory://", service="bench", routers=[router]) as bus:
        for event in events:
            await bus.publish(event)
            await asyncio.sleep(0) if bus.broker.pending()["queued"] > 256 else None  # type: ignore[attr-defined]
        await done.wait()


def trial(impl: Callable[[list[UserCreated]], Awaitable[None]], n: int) -> dict[str, float]:
    events = [make_event(i) for i in range(n)]
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(impl(events))  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"events_per_s": n / wall, "cpu_us_per_event": cpu / n * 1e6}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)

    trial(eventbus_memory, 1000)  # warm-up: imports, caches
    rows: dict[str, list[dict[str, float]]] = {"bare_queue": [], "eventbus": []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for _ in range(args.runs):
        bare = trial(bare_queue, args.events)
        bus = trial(eventbus_memory, args.events)
        rows["bare_queue"].append(bare)
        rows["eventbus"].append(bus)
        ratios.append(bus["events_per_s"] / bare["events_per_s"])
        cpu_ratios.append(bus["cpu_us_per_event"] / bare["cpu_us_per_event"])

    result: dict[str, Any] = {
        "events": args.events,
        "runs": args.runs,
        "python": sys.version.split()[0],
        "throughput_ratio": summary(ratios),
        "cpu_ratio": summary(cpu_ratios),
    }
    for name, trials in rows.items():
        result[name] = {k: summary([t[k] for t in trials]) for k in trials[0]}
    print(f"memory bus, {args.events} events x {args.runs} runs (median [min-max])")
    for name in rows:
        eps, cpu = result[name]["events_per_s"], result[name]["cpu_us_per_event"]
        print(
            f"  {name:<11} {eps['median']:>9,.0f} ev/s [{eps['min']:,.0f}-{eps['max']:,.0f}]"
            f"  {cpu['median']:6.1f} us CPU/event"
        )
    tr = result["throughput_ratio"]
    print(f"  ratio eventbus/bare: {tr['median']:.2f} [{tr['min']:.2f}-{tr['max']:.2f}]")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return result


if __name__ == "__main__":
    main()
