"""Instructions per event: ``python -m bench.instructions [--brokers memory] [--modes ...]``.

Times on a shared 2-core machine move by a factor of two or three within a day; the number of
instructions a process executes does not. So the hot-path rounds of ``docs/benchmarks.md`` are
steered by instruction counts, and this is how they are taken. Each count runs one benchmark
trial (:mod:`bench.trial`: the same workload, implementations and modes as the timed
benchmark) under ``valgrind --tool=callgrind`` twice, with ``small`` and ``large`` events, and
divides the difference of the two process totals by the difference of the event counts:
start-up, imports, connections and the warm-up cancel out, what is left is the cost of one
more event: publishing it, delivering it, handling it and acknowledging it, in that process.
``PYTHONHASHSEED=0`` fixes the order of sets and dicts, so a count on the memory bus repeats
to within a fraction of a percent. On a networked broker the count also depends on how full
each fetched batch is, which depends on timing (a process under callgrind runs about 50 times
slower than the server it talks to), so it moves between runs (Redis batched: 239,400 and
236,600 instructions per event in two counts of the same code).

Writes ``bench/results/instructions.json`` and the table between the ``instructions`` markers
of ``docs/benchmarks.md``. ``scripts/bench --instructions`` runs it (installing valgrind when
it is missing); the other arguments go here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import MODES, baseline
from bench.report import update_docs
from bench.run import BROKERS, implementations

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("<!-- instructions:start -->", "<!-- instructions:end -->")
TIMEOUT = 1800.0


def callgrind_total(text: str) -> int:
    """The instruction total of a callgrind output file (its ``totals:`` or ``summary:`` line)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("totals", "summary") and value.split():
            found[name] = int(value.split()[0])
    total = found.get("totals", found.get("summary"))
    if total is None:
        raise ValueError("no totals: or summary: line; is this a callgrind output file?")
    return total


def per_event(small: tuple[int, int], large: tuple[int, int]) -> float:
    """Instructions of one more event, from two ``(events, instructions)`` measurements."""
    (n_small, i_small), (n_large, i_large) = small, large
    if n_large <= n_small:
        raise ValueError(f"the large trial ({n_large} events) must have more than {n_small}")
    return (i_large - i_small) / (n_large - n_small)


def plan(brokers: str, modes: Sequence[str]) -> dict[str, list[str]]:
    """The modes to count on each broker: ``memory,redis:batch`` is every mode of ``modes`` on
    the memory bus and only ``batch`` on Redis."""
    wanted: dict[str, list[str]] = {}
    for item in filter(None, brokers.split(",")):
        broker, _, only = item.partition(":")
        wanted[broker] = [m for m in only.split("+") if m] if only else list(modes)
    return wanted


def count(broker: str, impl: str, mode: str, events: int) -> int | str:
    """The instructions of one whole trial process under callgrind, or why it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.trial",
            broker,
            impl,
            mode,
            "--events",
            str(events),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return f"no result within {TIMEOUT:g} s under callgrind"
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if not line.startswith("==")]
            return lines[-1] if lines else f"exit status {done.returncode}"
        return callgrind_total(out.read_text())


def measure(
    cells: Sequence[tuple[str, str, str]], small: int, large: int, jobs: int
) -> list[dict[str, Any]]:
    """Per-event instructions of every ``(broker, impl, mode)``, ``jobs`` valgrinds at once.

    A trial that fails (a networked client under callgrind runs about 50 times slower and may
    time out) gives its cell an ``error`` instead; the others are still counted."""
    runs = [(*cell, n) for cell in cells for n in (small, large)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        totals = list(pool.map(lambda run: count(*run), runs))
    rows: list[dict[str, Any]] = []
    for i, (broker, impl, mode) in enumerate(cells):
        first, second = totals[2 * i], totals[2 * i + 1]
        row: dict[str, Any] = {"broker": broker, "impl": impl, "mode": mode}
        if isinstance(first, int) and isinstance(second, int):
            row["instructions_per_event"] = per_event((small, first), (large, second))
            row["totals"] = [first, second]
        else:
            row["error"] = next(t for t in (first, second) if isinstance(t, str))
            print(f"{broker}/{impl}/{mode} failed: {row['error']}", file=sys.stderr)
        rows.append(row)
    return rows


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"Counted {meta['date']} on {meta['machine']}, Python {meta['python']}: each figure is "
        f"the difference between trials of {meta['small']:,} and {meta['large']:,} events "
        "under callgrind, per event.",
        "",
        "| broker | mode | eventbus | baseline | eventbus − baseline | eventbus / baseline |",
        "|---|---|---|---|---|---|",
    ]
    by_cell = {(r["broker"], r["impl"], r["mode"]): r for r in results["rows"]}
    for broker, impl, mode in by_cell:
        base = baseline(broker)
        if impl != "eventbus" or (broker, base, mode) not in by_cell:
            continue
        ours = by_cell[(broker, impl, mode)].get("instructions_per_event")
        theirs = by_cell[(broker, base, mode)].get("instructions_per_event")
        if ours is None or theirs is None:
            lines.append(f"| {broker} | {mode} | {_shown(ours)} | {_shown(theirs)} | | |")
            continue
        lines.append(
            f"| {broker} | {mode} | {ours:,.0f} | {theirs:,.0f} ({base}) | "
            f"{ours - theirs:,.0f} | {ours / theirs:.2f} |"
        )
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "failed" if value is None else f"{value:,.0f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--brokers",
        default="memory",
        help="comma-separated; BROKER:MODE+MODE counts only those modes on that broker",
    )
    parser.add_argument("--modes", default="single,batch,concurrent", help="comma-separated")
    parser.add_argument("--small", type=int, default=1000, help="events of the smaller trial")
    parser.add_argument("--large", type=int, default=6000, help="events of the larger trial")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "instructions.json"
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    wanted = plan(args.brokers, modes)
    named = {m for broker_modes in wanted.values() for m in broker_modes}
    unknown = sorted(set(wanted) - set(BROKERS)) + sorted(named - set(MODES))
    if unknown:
        parser.error(f"unknown broker or mode: {', '.join(unknown)}")
    if args.large <= args.small:
        parser.error("--large must be more events than --small")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    cells = [
        (broker, impl, mode)
        for broker, broker_modes in wanted.items()
        for impl in ("eventbus", baseline(broker))
        if impl in implementations(broker)
        for mode in broker_modes
    ]
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "small": args.small,
            "large": args.large,
        },
        "rows": measure(cells, args.small, args.large, args.jobs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    table = render(results)
    print(table)
    if not args.no_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", table, MARKERS)


if __name__ == "__main__":
    main()
