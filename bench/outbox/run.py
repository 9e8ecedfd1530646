"""The outbox relay benchmark: ``python -m bench.outbox [--reps N] [--scale F] [--no-docs]``.

Each repetition runs every relay cell once — database × broker × ordering × relay count, and
the hand-written baseline right next to eventbus in the target cells (the two in alternating
order from one repetition to the next) — then one staging-cost trial per database. The relays
of every trial are fresh processes (:mod:`bench.outbox.trial`), and so is each staging trial
(:mod:`bench.outbox.staging`). Ratios are computed inside a repetition; the summary gives the
median with min and max over the repetitions.

Writes ``bench/results/outbox.json`` (every trial, the summary, the ratios, the targets, the
machine) and the tables between the ``outbox`` markers of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import server_url
from bench.outbox.common import (
    BATCH_SIZE,
    BROKERS,
    DATABASES,
    KEYS,
    ORDERINGS,
    PER_TRANSACTION,
    RELAY_COUNTS,
    Cell,
    has_baseline,
    make_engine,
)
from bench.outbox.report import aggregate, render_markdown, update_docs
from bench.outbox.staging import BATCH, SINGLE
from bench.outbox.trial import relay_trial
from bench.outbox.worker import IDLE_PAUSE

ROOT = Path(__file__).resolve().parent.parent.parent
EVENTS = 8_000
"""Rows staged per relay trial (times ``--scale``)."""
TRIAL_TIMEOUT = 600.0
PACKAGES = ("eventbus", "sqlalchemy", "asyncpg", "aiosqlite", "redis", "aiokafka", "aio-pika")


def cells(args: argparse.Namespace, rep: int) -> list[Cell]:
    """This repetition's trials, in the order they run."""
    out = []
    for db in args.dbs:
        for broker in args.brokers:
            for ordering in args.orderings:
                for relays in args.relays:
                    impls = ["eventbus", "baseline"]
                    if not has_baseline(db, broker, ordering, relays):
                        impls = ["eventbus"]
                    elif rep % 2:
                        impls.reverse()
                    out += [Cell(db, broker, ordering, relays, impl) for impl in impls]
    return out


def run_relay_trial(cell: Cell, events: int) -> dict[str, Any]:
    try:
        return asyncio.run(asyncio.wait_for(relay_trial(cell, events), TRIAL_TIMEOUT))
    except Exception as exc:  # recorded, reported, and left out of the figures
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def run_staging_trial(db: str, scale: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.outbox.staging", db]
    command += [
        "--single",
        str(max(5, int(SINGLE * scale))),
        "--batch",
        str(max(2, int(BATCH * scale))),
    ]
    if scale < 1:  # a smoke run
        command += ["--runs", "3"]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=TRIAL_TIMEOUT, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail) or f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def show(
    started: float, rep: int, what: str, result: dict[str, Any], keys: tuple[str, ...]
) -> None:
    shown = result.get("error") or ", ".join(
        f"{k}={result[k]:,.1f}" for k in keys if isinstance(result.get(k), float)
    )
    print(f"[{time.monotonic() - started:6.0f}s] rep {rep + 1} {what:<38} {shown}", flush=True)


def run_all(args: argparse.Namespace, events: int) -> tuple[list[dict[str, Any]], list[Any]]:
    started = time.monotonic()
    trials: list[dict[str, Any]] = []
    staging: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for cell in cells(args, rep):
            result = run_relay_trial(cell, events)
            trials.append({"rep": rep, **vars(cell), **result})
            show(
                started,
                rep,
                f"{cell.name} {cell.impl}",
                result,
                ("events_per_s", "cpu_us_per_event"),
            )
        for db in args.dbs if args.staging else ():
            result = run_staging_trial(db, args.scale)
            staging.append({"rep": rep, "db": db, **result})
            flat = {k: v["added_us_per_event"] for k, v in result.items() if isinstance(v, dict)}
            show(started, rep, f"staging {db} (µs/event added)", {**result, **flat}, tuple(flat))
    return trials, staging


async def _servers(dbs: list[str], brokers: list[str]) -> dict[str, str]:
    import redis.asyncio as aioredis
    import sqlalchemy as sa

    out = {}
    if "postgresql" in dbs:
        engine = make_engine(server_url("postgres"))
        try:
            async with engine.connect() as connection:
                for name in ("server_version", "fsync", "synchronous_commit"):
                    value = (await connection.execute(sa.text(f"SHOW {name}"))).scalar()
                    out[f"PostgreSQL {name}".replace(" server_version", "")] = str(value)
        finally:
            await engine.dispose()
    if "redis" in brokers:
        client = aioredis.Redis.from_url(server_url("redis"))
        async with client:
            out["Redis"] = str((await client.info("server"))["redis_version"])
            out["Redis appendfsync"] = str((await client.config_get("appendfsync"))["appendfsync"])
    return out


def server_versions(dbs: list[str], brokers: list[str]) -> dict[str, str]:
    """The versions and durability settings of the servers the run used."""
    out = {"SQLite": sqlite3.sqlite_version} if "sqlite" in dbs else {}
    try:
        return {**out, **asyncio.run(asyncio.wait_for(_servers(dbs, brokers), 20))}
    except (Exception, SystemExit) as exc:
        return {**out, "servers": f"not asked ({type(exc).__name__})"}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3, help="repetitions")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    parser.add_argument("--dbs", default=",".join(DATABASES), help="comma-separated")
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated")
    parser.add_argument("--orderings", default=",".join(ORDERINGS), help="comma-separated")
    parser.add_argument("--relays", default=",".join(map(str, RELAY_COUNTS)), help="e.g. 1,4")
    parser.add_argument("--no-staging", dest="staging", action="store_false", help="skip it")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "outbox.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.dbs, args.brokers = args.dbs.split(","), args.brokers.split(",")
    args.orderings = args.orderings.split(",")
    args.relays = [int(n) for n in args.relays.split(",")]
    unknown = (
        sorted(set(args.dbs) - set(DATABASES))
        + sorted(set(args.brokers) - set(BROKERS))
        + sorted(set(args.orderings) - set(ORDERINGS))
    )
    if unknown or not args.relays or min(args.relays) < 1:
        parser.error(f"unknown database, broker, ordering or relay count: {unknown or args.relays}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    events = max(100, int(EVENTS * args.scale))
    started = time.monotonic()
    trials, staging = run_all(args, events)
    results = aggregate(trials, staging)
    results["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": versions(),
        "servers": server_versions(args.dbs, args.brokers),
        "reps": args.reps,
        "events": events,
        "settings": {
            "batch_size": BATCH_SIZE,
            "keys": KEYS,
            "per_transaction": PER_TRANSACTION,
            "idle_pause_s": IDLE_PAUSE,
        },
        "duration_s": round(time.monotonic() - started, 1),
    }
    results["trials"], results["staging_trials"] = trials, staging
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    table = render_markdown(results)
    print(table)
    if not args.no_docs:
        update_docs(args.docs, table)
    missed = [t["target"] for t in results["targets"] if not t["met"]]
    print(f"targets missed: {', '.join(missed) or 'none'}; results in {args.out}")
    return results
