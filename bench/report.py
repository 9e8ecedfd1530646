"""Turn ``bench.run`` results into the markdown tables and the chart of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.common import baseline

START, END = "<!-- results:start -->", "<!-- results:end -->"
TITLES = {
    "memory": "Memory bus",
    "redis": "Redis Streams",
    "rabbitmq": "RabbitMQ",
    "kafka": "Kafka",
}
COLOURS = {
    "eventbus": "tab:blue",
    "raw": "tab:green",
    "bare": "tab:green",
    "faststream": "tab:orange",
}
"""The same colour for an implementation on every broker (raw client and bare queue alike)."""
MODE_NAMES = {
    "single": "one-by-one",
    "batch": "batched",
    "concurrent": "100 concurrent",
    "latency": "closed loop",
}


def _rate(cell: dict[str, Any] | None) -> str:
    if not cell:
        return ""
    return f"{cell['median']:,.0f} ({cell['min']:,.0f}–{cell['max']:,.0f})"


def _num(cell: dict[str, Any] | None, digits: int = 1) -> str:
    return f"{cell['median']:,.{digits}f}" if cell else ""


def _spread(cell: dict[str, Any] | None) -> str:
    if not cell:
        return ""
    return f"{cell['median']:,.1f} ({cell['min']:,.1f}–{cell['max']:,.1f})"


def _ratio(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "not measured"
    return f"{cell['median']:.2f} ({cell['min']:.2f}–{cell['max']:.2f})"


def _speed(meta: dict[str, Any]) -> str:
    """What the speed loop timed before each repetition took (runs before it had none)."""
    loop = meta.get("loop_s")
    if not loop:
        return ""
    shown = ", ".join(f"{seconds:.2f}" for seconds in loop)
    return (
        f" Before each repetition a fixed pure-Python loop of {meta['loop_iterations']:,} "
        f"iterations took {shown} s of CPU: the machine's speed at the time, to compare runs by."
    )


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; {meta['reps']} repetitions, "
        f"{meta['duration_s'] / 60:.1f} minutes in all. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ". Rates are medians with (min–max) over the repetitions; CPU is the client "
        "process's user + system time per event (producer and consumer together)." + _speed(meta),
        "",
    ]
    for broker, modes in results["summary"].items():
        base = baseline(broker)
        lines += [
            f"### {TITLES.get(broker, broker)}",
            "",
            f"{meta['events'][broker]:,} events per trial; "
            f"{meta['latency_events'][broker]:,} round trips per latency trial.",
            "",
            "| mode | implementation | end-to-end events/s | publish events/s "
            f"| CPU µs/event | CPU µs/event beyond {base} | p50 ms | p99 ms | peak RSS MB "
            "| left unacked |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        beyond = results["ratios"].get(broker, {})
        for mode in MODE_NAMES:
            for impl, cell in modes.get(mode, {}).items():
                extra = beyond.get(f"{mode}:cpu_beyond_us:{impl}-{base}")
                left = cell.get("unsettled")
                lines.append(
                    f"| {MODE_NAMES[mode]} | {impl} | {_rate(cell.get('e2e_per_s'))} "
                    f"| {_rate(cell.get('publish_per_s'))} | {_num(cell.get('cpu_us_per_event'))} "
                    f"| {_spread(extra)} | {_num(cell.get('p50_ms'), 3)} "
                    f"| {_num(cell.get('p99_ms'), 3)} | {_num(cell.get('peak_rss_mb'), 0)} "
                    f"| {'' if left is None else format(left['max'], ',.0f')} |"
                )
        lines.append("")
    lines += [
        "### Targets",
        "",
        "Each ratio is computed inside one repetition (eventbus over the baseline named in the "
        "ratio; `cpu_beyond_us` is a difference in µs per event, not a ratio); the table gives "
        "their median (min–max). `left unacked` is the most any repetition left behind: "
        "pending entries, uncommitted offsets or messages back in the queue once the "
        "implementation had stopped.",
        "",
        "| broker | target | ratio | measured | met |",
        "|---|---|---|---|---|",
    ]
    for broker, checks in results["targets"].items():
        for check in checks:
            lines.append(
                f"| {TITLES.get(broker, broker)} | {check['target']} | `{check['ratio']}` "
                f"| {_ratio(check['measured'])} | {'yes' if check['met'] else '**no**'} |"
            )
    if results["failures"]:
        lines += ["", "Trials that failed (left out of the figures above):", ""]
        for failure in results["failures"]:
            lines.append(
                f"- rep {failure['rep'] + 1} {failure['broker']} {failure['mode']} "
                f"{failure['impl']}: {failure['error']}"
            )
    lines += ["", "![throughput and CPU per event](img/benchmarks.png)"]
    return "\n".join(lines)


def update_docs(page: Path, table: str, markers: tuple[str, str] = (START, END)) -> None:
    """Replace what lies between the ``markers`` (the results ones) of ``page`` with ``table``."""
    start, end = markers
    text = page.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no {start} … {end} markers to put the results between")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    page.write_text(pattern.sub(lambda _: f"{start}\n{table}\n{end}", text))


def render_chart(results: dict[str, Any], path: Path) -> None:
    """End-to-end rate and CPU per event, per broker, mode and implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brokers = list(results["summary"])
    modes = ["single", "batch", "concurrent"]
    fig, axes = plt.subplots(2, len(brokers), figsize=(4.2 * len(brokers), 7), squeeze=False)
    for column, broker in enumerate(brokers):
        cells = results["summary"][broker]
        found = {impl for mode in modes for impl in cells.get(mode, {})}
        impls = [i for i in COLOURS if i in found] + sorted(found - set(COLOURS))
        width = 0.8 / max(1, len(impls))
        for row, (metric, label) in enumerate(
            (("e2e_per_s", "end-to-end events/s"), ("cpu_us_per_event", "CPU µs per event"))
        ):
            ax = axes[row][column]
            for i, impl in enumerate(impls):
                values = [cells.get(m, {}).get(impl, {}).get(metric, {}) for m in modes]
                ax.bar(
                    [x + i * width for x in range(len(modes))],
                    [v.get("median", 0) for v in values],
                    width,
                    yerr=[
                        [v.get("median", 0) - v.get("min", 0) for v in values],
                        [v.get("max", 0) - v.get("median", 0) for v in values],
                    ],
                    label=impl,
                    color=COLOURS.get(impl),
                    capsize=2,
                )
            ax.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(modes))])
            ax.set_xticklabels([MODE_NAMES[m] for m in modes], fontsize=8)
            ax.set_title(f"{TITLES.get(broker, broker)}: {label}", fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            if row == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
