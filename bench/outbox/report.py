"""Turn ``bench.outbox`` trials into the summary, the ratios, the targets and the docs tables."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.outbox.common import (
    BATCH_SIZE,
    BROKERS,
    DATABASES,
    KEYS,
    ORDERINGS,
    PER_TRANSACTION,
    TARGET_BROKERS,
    TARGET_EVENTS_PER_S,
    Cell,
    has_baseline,
)
from bench.report import update_docs as write_between

START, END = "<!-- outbox:start -->", "<!-- outbox:end -->"
NAMES = {
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL",
    "memory": "memory",
    "redis": "Redis Streams",
    "rabbitmq": "RabbitMQ",
    "kafka": "Kafka",
}
METRICS = ("events_per_s", "cpu_us_per_event", "peak_rss_mb")
STAGING = ("publish", "publish_many")


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cell_of(trial: dict[str, Any]) -> Cell:
    return Cell(trial["db"], trial["broker"], trial["ordering"], trial["relays"], trial["impl"])


def summary_of(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell and implementation: each metric's median, min and max."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for trial in trials:
        grouped.setdefault(cell_of(trial).key(), []).append(trial)
    out = []
    for key, group in grouped.items():
        entry: dict[str, Any] = dict(
            zip(("db", "broker", "ordering", "relays", "impl"), key, strict=True)
        )
        entry["reps"] = len(group)
        for metric in METRICS:
            entry[metric] = summarise([t[metric] for t in group])
        out.append(entry)
    return out


def ratios_of(trials: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """eventbus over the baseline, per repetition, for every cell that has both."""
    per_rep: dict[str, list[float]] = {}
    by_rep_cell = {(t["rep"], cell_of(t).key()): t for t in trials}
    for (rep, key), ours in by_rep_cell.items():
        if key[4] != "eventbus":
            continue
        theirs = by_rep_cell.get((rep, (*key[:4], "baseline")))
        if theirs is None:
            continue
        name = Cell(*key).name
        for metric in ("events_per_s", "cpu_us_per_event"):
            per_rep.setdefault(f"{name}:{metric}:eventbus/baseline", []).append(
                ours[metric] / theirs[metric]
            )
    return {key: summarise(values) for key, values in sorted(per_rep.items())}


def targets_of(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ordered relay moves >= TARGET_EVENTS_PER_S from PostgreSQL into Redis and Kafka."""
    out = []
    for broker in TARGET_BROKERS:
        cell = Cell("postgresql", broker, "key", 1)
        found = _find(summary, cell)
        measured = found["events_per_s"] if found else None
        out.append(
            {
                "target": f"PostgreSQL → {NAMES[broker]}, ordered, 1 relay: "
                f"≥ {TARGET_EVENTS_PER_S:,.0f} events/s",
                "cell": cell.name,
                "bound": TARGET_EVENTS_PER_S,
                "measured": measured,
                "met": bool(measured and measured["median"] >= TARGET_EVENTS_PER_S),
                "met_every_rep": bool(measured and measured["min"] >= TARGET_EVENTS_PER_S),
            }
        )
    return out


def _cell_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["db"], entry["broker"], entry["ordering"], entry["relays"], entry["impl"])


def staging_of(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per database and call: the trials' medians, summarised over the repetitions."""
    out: dict[str, dict[str, Any]] = {}
    for db in DATABASES:
        mine = [t for t in trials if t["db"] == db and "error" not in t]
        if not mine:
            continue
        out[db] = {
            call: {
                metric: summarise([t[call][metric] for t in mine])
                for metric in ("added_us_per_event", "tx_us_per_row")
            }
            for call in STAGING
        }
    return out


def aggregate(trials: list[dict[str, Any]], staging: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in trials if "error" not in t]
    summary = summary_of(ok)
    return {
        "summary": summary,
        "ratios": ratios_of(ok),
        "targets": targets_of(summary),
        "staging": staging_of(staging),
        "failures": [t for t in trials + staging if "error" in t],
    }


def _rate(cell: dict[str, Any] | None, digits: int = 0) -> str:
    if not cell:
        return "–"
    return f"{cell['median']:,.{digits}f} ({cell['min']:,.{digits}f}–{cell['max']:,.{digits}f})"


def _find(summary: list[dict[str, Any]], cell: Cell) -> dict[str, Any] | None:
    return next((s for s in summary if _cell_key(s) == cell.key()), None)


def relay_tables(results: dict[str, Any], metric: str, digits: int) -> list[str]:
    summary = results["summary"]
    ran = {(s["ordering"], s["relays"]) for s in summary}
    columns = sorted(ran, key=lambda c: (ORDERINGS.index(c[0]), c[1]))
    heads = " | ".join(
        f"{'ordered' if o == 'key' else 'unordered'}, {r} relay{'s' * (r > 1)}" for o, r in columns
    )
    lines = []
    for db in DATABASES:
        rows = []
        for broker in BROKERS:
            found = [_find(summary, Cell(db, broker, o, r)) for o, r in columns]
            if any(found):
                rows.append(f"| {NAMES[broker]} | " + " | ".join(
                    _rate(f[metric] if f else None, digits) for f in found
                ) + " |")  # fmt: skip
        if rows:
            lines += [f"| {NAMES[db]} → | {heads} |", "|---" * (len(columns) + 1) + "|", *rows, ""]
    return lines


def baseline_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| cell | eventbus events/s | baseline events/s | eventbus/baseline events/s "
        "| eventbus/baseline CPU per event |",
        "|---|---|---|---|---|",
    ]
    summary, ratios = results["summary"], results["ratios"]
    for db in DATABASES:
        for broker in BROKERS:
            if not has_baseline(db, broker, "key", 1):
                continue
            cell = Cell(db, broker, "key", 1)
            ours, theirs = (
                _find(summary, cell),
                _find(summary, Cell(db, broker, "key", 1, "baseline")),
            )
            speed = ratios.get(f"{cell.name}:events_per_s:eventbus/baseline")
            cpu = ratios.get(f"{cell.name}:cpu_us_per_event:eventbus/baseline")
            lines.append(
                f"| {NAMES[db]} → {NAMES[broker]}, ordered, 1 relay "
                f"| {_rate(ours['events_per_s'] if ours else None)} "
                f"| {_rate(theirs['events_per_s'] if theirs else None)} "
                f"| {_rate(speed, 2)} | {_rate(cpu, 2)} |"
            )
    return lines


def staging_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| database | call | µs added per event | the transaction without it, µs per user row |",
        "|---|---|---|---|",
    ]
    for db, calls in results["staging"].items():
        for call, figures in calls.items():
            shape = (
                "one event, one row"
                if call == "publish"
                else f"{PER_TRANSACTION} events, {PER_TRANSACTION} rows"
            )
            lines.append(
                f"| {NAMES[db]} | `{call}` ({shape}) | {_rate(figures['added_us_per_event'])} "
                f"| {_rate(figures['tx_us_per_row'])} |"
            )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; {meta['reps']} repetitions, "
        f"{meta['duration_s'] / 60:.1f} minutes in all. Versions: "
        + ", ".join(f"{k} {v}" for k, v in {**meta["versions"], **meta["servers"]}.items())
        + f". {meta['events']:,} staged events per trial ({PER_TRANSACTION} per transaction, "
        f"{KEYS} keys), batches of {BATCH_SIZE}. Figures are medians with (min–max) over the "
        "repetitions.",
        "",
        "**Relay throughput**, events/s, staged rows over the time until nothing was pending:",
        "",
        *relay_tables(results, "events_per_s", 0),
        "**Relay CPU**, µs per event: user + system time of the relay processes, all together:",
        "",
        *relay_tables(results, "cpu_us_per_event", 0),
    ]
    if results["ratios"]:
        lines += ["**Against a hand-written relay** (ratios computed inside each repetition):", ""]
        lines += [*baseline_table(results), ""]
    lines += ["**Targets:**", "", *target_table(results)]
    if results["staging"]:
        lines += ["", "**Staging cost** in the caller's transaction:", "", *staging_table(results)]
    if results["failures"]:
        lines += ["", "Trials that failed (left out of the figures above):", ""]
        for f in results["failures"]:
            what = (
                f"{f['db']}/{f['broker']}/{f['ordering']}/{f['relays']} {f['impl']}"
                if "impl" in f
                else f"staging {f['db']}"
            )
            lines.append(f"- rep {f['rep'] + 1} {what}: {f['error']}")
    return "\n".join(lines)


def target_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| target | measured events/s | met (median) | met in every repetition |",
        "|---|---|---|---|",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['target']} | {_rate(t['measured'])} | {'yes' if t['met'] else '**no**'} "
            f"| {'yes' if t['met_every_rep'] else 'no'} |"
        )
    return lines


def update_docs(page: Path, table: str) -> None:
    """Replace what lies between the outbox markers of ``page`` with ``table``."""
    write_between(page, table, (START, END))
