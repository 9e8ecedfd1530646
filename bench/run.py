"""Run every benchmark trial, interleaved, and write the results: ``python -m bench.run``.

For each repetition, broker and mode, each implementation runs once (A B C, then the next mode;
the order rotates with the repetition so no implementation always goes first), every trial in a
fresh process on a fresh channel (:mod:`bench.trial`). Ratios are computed inside each
repetition, so both sides of a ratio saw the same machine; the summary gives the median with
min and max over the repetitions.

Writes ``bench/results/results.json`` (every trial, the summary, the ratios and the targets),
the tables between the ``results`` markers in ``docs/benchmarks.md``, and the chart
``docs/img/benchmarks.png``. ``scripts/bench`` starts the servers and calls this.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import MODES, baseline
from bench.report import render_chart, render_markdown, update_docs

ROOT = Path(__file__).resolve().parent.parent
BROKERS = ("memory", "redis", "rabbitmq", "kafka")
EVENTS = {"memory": 20_000, "redis": 3_000, "rabbitmq": 2_000, "kafka": 3_000}
"""Events per trial, sized so a trial takes a few seconds."""
LATENCY_EVENTS = {"memory": 5_000, "redis": 1_000, "rabbitmq": 500, "kafka": 300}
"""Round trips per latency trial."""
TRIAL_TIMEOUT = 300.0
METRICS = (
    "publish_per_s",
    "e2e_per_s",
    "cpu_us_per_event",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "unsettled",
)
OVERHEAD_US = 10.0
"""eventbus's CPU per event beyond the raw client (the bare loop in memory), at most."""


def implementations(broker: str) -> list[str]:
    module = importlib.import_module(f"bench.workloads.{broker}")
    return list(module.IMPLEMENTATIONS)


def run_trial(broker: str, impl: str, mode: str, events: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.trial", broker, impl, mode, "--events", str(events)]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=TRIAL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TRIAL_TIMEOUT:.0f}s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail) or f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios_of(rep: dict[tuple[str, str], dict[str, Any]], broker: str) -> dict[str, float]:
    """The ratios of one repetition of one broker, keyed ``"mode:metric:impl/baseline"``."""
    out: dict[str, float] = {}
    baselines = ["bare"] if broker == "memory" else ["raw", "faststream"]
    for mode in MODES:
        base = rep.get((mode, baselines[0]), {}).get("cpu_us_per_event")
        for impl in ("eventbus", "faststream"):
            cpu = rep.get((mode, impl), {}).get("cpu_us_per_event")
            if cpu is not None and base is not None:  # CPU per event beyond the raw client
                out[f"{mode}:cpu_beyond_us:{impl}-{baselines[0]}"] = cpu - base
        ours = rep.get((mode, "eventbus"), {})
        for base in baselines:
            theirs = rep.get((mode, base), {})
            for metric in ("e2e_per_s", "publish_per_s", "cpu_us_per_event", "p50_ms"):
                if metric in ours and metric in theirs and theirs[metric]:
                    out[f"{mode}:{metric}:eventbus/{base}"] = ours[metric] / theirs[metric]
    raw_single = rep.get(("single", baseline(broker)), {})
    for impl in ("eventbus", "raw", "faststream"):
        concurrent = rep.get(("concurrent", impl), {})
        if "publish_per_s" in concurrent and raw_single.get("publish_per_s"):
            out[f"concurrent:publish_per_s:{impl}/raw-single"] = (
                concurrent["publish_per_s"] / raw_single["publish_per_s"]
            )
    return out


def targets(broker: str, ratios: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each target of the benchmark issue with its measured median ratio and whether it holds."""
    checks: list[tuple[str, str, str, float]] = []  # (label, ratio key, "min"/"max", bound)
    base = baseline(broker)
    for mode in MODES:
        checks.append(
            (
                f"{mode}: CPU beyond {base} ≤ {OVERHEAD_US:g} µs/event",
                f"{mode}:cpu_beyond_us:eventbus-{base}",
                "max",
                OVERHEAD_US,
            )
        )
    if broker == "memory":
        for mode in ("single", "batch", "concurrent"):
            checks.append(
                (f"{mode}: e2e ≥ 0.5× bare", f"{mode}:e2e_per_s:eventbus/bare", "min", 0.5)
            )
    else:
        for mode in ("single", "batch", "concurrent"):
            checks.append((f"{mode}: e2e ≥ 0.9× raw", f"{mode}:e2e_per_s:eventbus/raw", "min", 0.9))
        for mode in MODES:
            checks.append(
                (f"{mode}: CPU ≤ 1.25× raw", f"{mode}:cpu_us_per_event:eventbus/raw", "max", 1.25)
            )
        checks.append(("latency: p50 ≤ 1.1× raw", "latency:p50_ms:eventbus/raw", "max", 1.1))
        for mode in ("single", "batch", "concurrent"):
            checks.append(
                (
                    f"{mode}: e2e ahead of FastStream",
                    f"{mode}:e2e_per_s:eventbus/faststream",
                    "min",
                    1.0,
                )
            )
        for mode in MODES:
            checks.append(
                (
                    f"{mode}: CPU below FastStream",
                    f"{mode}:cpu_us_per_event:eventbus/faststream",
                    "max",
                    1.0,
                )
            )
        checks.append(
            ("latency: p50 below FastStream", "latency:p50_ms:eventbus/faststream", "max", 1.0)
        )
        checks.append(
            (
                "100 concurrent publishers ≥ 3× raw one-by-one",
                "concurrent:publish_per_s:eventbus/raw-single",
                "min",
                3.0,
            )
        )
    out = []
    for label, key, kind, bound in checks:
        measured = ratios.get(key)
        median = measured["median"] if measured else None
        ok = median is not None and (median >= bound if kind == "min" else median <= bound)
        out.append({"target": label, "ratio": key, "bound": bound, "measured": measured, "met": ok})
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("eventbus", "pydantic", "aiokafka", "aio-pika", "redis", "faststream"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (>= 5 for the docs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "results.json")
    parser.add_argument(
        "--no-docs", action="store_true", help="leave docs/benchmarks.md and the chart alone"
    )
    args = parser.parse_args(argv)
    brokers = [b for b in args.brokers.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(brokers) - set(BROKERS)) + sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown broker or mode: {', '.join(unknown)}")

    started = time.monotonic()
    trials: list[dict[str, Any]] = []
    loop_s: list[float] = []
    for rep in range(args.reps):
        loop_s.append(machine_speed())
        print(f"rep {rep + 1}: the speed loop took {loop_s[-1]:.3f} s", flush=True)
        for broker in brokers:
            impls = implementations(broker)
            shift = rep % len(impls)
            impls = impls[shift:] + impls[:shift]
            for mode in modes:
                count = LATENCY_EVENTS[broker] if mode == "latency" else EVENTS[broker]
                count = max(10, int(count * args.scale))
                for impl in impls:
                    result = run_trial(broker, impl, mode, count)
                    trials.append(
                        {"rep": rep, "broker": broker, "mode": mode, "impl": impl, **result}
                    )
                    shown = result.get("error") or ", ".join(
                        f"{k}={v:,.1f}" for k, v in result.items() if k in METRICS
                    )
                    print(
                        f"[{time.monotonic() - started:6.0f}s] rep {rep + 1} {broker:<8} "
                        f"{mode:<10} {impl:<10} {shown}",
                        flush=True,
                    )

    results = aggregate(trials, brokers)
    results["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": versions(),
        "reps": args.reps,
        "events": {b: max(10, int(EVENTS[b] * args.scale)) for b in brokers},
        "latency_events": {b: max(10, int(LATENCY_EVENTS[b] * args.scale)) for b in brokers},
        "duration_s": round(time.monotonic() - started, 1),
        "loop_iterations": SPEED_LOOP,
        "loop_s": loop_s,
    }
    results["trials"] = trials
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    table = render_markdown(results)
    print(table)
    if not args.no_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", table)
        render_chart(results, ROOT / "docs" / "img" / "benchmarks.png")
    missed = [t for b in results["targets"].values() for t in b if not t["met"]]
    print(f"{len(missed)} target(s) missed; results in {args.out}")
    return results


SPEED_LOOP = 2_000_000
"""Iterations of the fixed loop timed before each repetition (see :func:`machine_speed`)."""


def machine_speed() -> float:
    """CPU seconds of a fixed pure-Python loop, the best of three: how fast this machine runs
    interpreted code at the moment. It moves by a factor of two or three within a day on a
    shared machine; reported per repetition, it lets two runs be compared."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        total = 0
        for i in range(SPEED_LOOP):
            total += i & 7
        best = min(best, time.process_time() - start)
    return best


def aggregate(trials: list[dict[str, Any]], brokers: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    target_table: dict[str, Any] = {}
    failures = [t for t in trials if "error" in t]
    for broker in brokers:
        mine = [t for t in trials if t["broker"] == broker and "error" not in t]
        cells: dict[str, dict[str, dict[str, Any]]] = {}
        for trial in mine:
            cell = cells.setdefault(trial["mode"], {}).setdefault(trial["impl"], {})
            for metric in METRICS:
                if metric in trial:
                    cell.setdefault(metric, []).append(trial[metric])
        summary[broker] = {
            mode: {
                impl: {m: summarise(v) for m, v in values.items()} for impl, values in impls.items()
            }
            for mode, impls in cells.items()
        }
        per_rep: dict[str, list[float]] = {}
        for rep in sorted({t["rep"] for t in mine}):
            rep_trials = {(t["mode"], t["impl"]): t for t in mine if t["rep"] == rep}
            for key, value in ratios_of(rep_trials, broker).items():
                per_rep.setdefault(key, []).append(value)
        ratios[broker] = {key: summarise(values) for key, values in per_rep.items()}
        target_table[broker] = targets(broker, ratios[broker])
        left = [t for t in mine if t.get("unsettled")]
        target_table[broker].append(
            {
                "target": "nothing left unacknowledged after any trial",
                "ratio": "unsettled",
                "bound": 0,
                "measured": summarise([float(t.get("unsettled", 0)) for t in mine] or [0.0]),
                "met": not left and all("unsettled" in t for t in mine),
            }
        )
    return {"summary": summary, "ratios": ratios, "targets": target_table, "failures": failures}


if __name__ == "__main__":
    main()
