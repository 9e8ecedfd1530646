"""The benchmark's measuring tools: the instruction counter of ``bench/instructions.py`` (what it
reads from callgrind's output, how it turns two trials into a per-event figure, what it writes
into the docs) and the machine-speed loop every run of ``bench/run.py`` reports."""

from __future__ import annotations

import pytest

from bench import instructions

# The head and the tail of a real callgrind output file (valgrind 3.19), the rest cut out.
CALLGRIND_OUT = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 19017
cmd:  /usr/bin/python3 -c pass
part: 1

positions: line
events: Ir
summary: 31580122

fl=(1) ???
fn=(1) 0x000000000001d100
0 12
totals: 31580122
"""


def test_the_total_is_read_from_the_totals_line() -> None:
    assert instructions.callgrind_total(CALLGRIND_OUT) == 31_580_122
    only_summary = CALLGRIND_OUT.replace("totals: 31580122\n", "")
    assert instructions.callgrind_total(only_summary) == 31_580_122


def test_a_file_without_totals_is_refused() -> None:
    with pytest.raises(ValueError, match="callgrind output"):
        instructions.callgrind_total("events: Ir\nfn=(1) main\n")


def test_one_more_event_costs_the_difference_over_the_extra_events() -> None:
    # 1,000 events: 1.5e9 instructions; 6,000 events: 2.0e9. Start-up cancels out.
    assert instructions.per_event((1000, 1_500_000_000), (6000, 2_000_000_000)) == 100_000
    with pytest.raises(ValueError, match="more than"):
        instructions.per_event((1000, 1), (1000, 2))


def row(broker: str, impl: str, per_event: int) -> dict[str, object]:
    return {"broker": broker, "impl": impl, "mode": "batch", "instructions_per_event": per_event}


def test_the_table_sets_eventbus_against_its_baseline() -> None:
    results = {
        "meta": {
            "date": "2026-12-03T09:00:00+00:00",
            "machine": "x86_64, 2 cores",
            "python": "3.11.7",
            "small": 1000,
            "large": 6000,
        },
        "rows": [
            row("memory", "eventbus", 75_000),
            row("memory", "bare", 30_000),
            row("redis", "eventbus", 240_000),
            {"broker": "redis", "impl": "raw", "mode": "batch", "error": "TimeoutError"},
            row("kafka", "eventbus", 300_000),
        ],
    }
    table = instructions.render(results)
    assert "| memory | batch | 75,000 | 30,000 (bare) | 45,000 | 2.50 |" in table
    assert "| redis | batch | 240,000 | failed | | |" in table  # its baseline timed out
    assert "kafka" not in table  # no baseline counted: no row
    assert "1,000 and 6,000 events" in table


def test_bad_arguments_fail_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        instructions.main(["--small", "5000", "--large", "5000", "--no-docs"])
    assert "--large must be more events than --small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        instructions.main(["--brokers", "nats", "--no-docs"])
    assert "unknown broker or mode: nats" in capsys.readouterr().err


def test_without_valgrind_it_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install valgrind"):
        instructions.main(["--no-docs"])


def test_a_broker_can_be_counted_in_some_modes_only() -> None:
    plan = instructions.plan("memory,redis:batch+single", ["single", "batch", "concurrent"])
    assert plan == {"memory": ["single", "batch", "concurrent"], "redis": ["batch", "single"]}


def test_every_run_reports_the_machines_speed() -> None:
    from bench.report import _speed
    from bench.run import SPEED_LOOP, machine_speed

    seconds = machine_speed()
    assert 0 < seconds < 60
    meta = {"loop_iterations": SPEED_LOOP, "loop_s": [0.214, seconds]}
    assert f"loop of {SPEED_LOOP:,} iterations took 0.21, {seconds:.2f} s of CPU" in _speed(meta)
    assert _speed({}) == ""  # a run from before the loop was timed


def test_a_trial_that_runs_out_of_time_marks_its_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def too_slow(command: list[str], **kwargs: object) -> object:
        raise subprocess.TimeoutExpired(command, instructions.TIMEOUT)

    monkeypatch.setattr(subprocess, "run", too_slow)
    rows = instructions.measure([("redis", "raw", "concurrent")], 1000, 6000, jobs=1)
    assert rows == [
        {"broker": "redis", "impl": "raw", "mode": "concurrent", "error": rows[0]["error"]}
    ]
    assert "no result within 1800 s" in rows[0]["error"]


def test_a_trial_runs_a_variant_by_name_and_refuses_an_unknown_one() -> None:
    import asyncio

    from bench import run, trial
    from bench.workloads import kafka

    assert "raw-headers" not in run.implementations("kafka")  # counted on its own only
    assert kafka.VARIANTS["raw-headers"].__mro__[1] is kafka.Raw
    with pytest.raises(SystemExit, match="no implementation 'nope' for memory: bare, eventbus"):
        asyncio.run(trial.run("memory", "nope", "batch", 1))


def test_the_redis_envelope_variant_writes_eventbus_entries_and_reads_the_event_back() -> None:
    from bench import run
    from bench.common import encode, make_event
    from bench.workloads import redis
    from eventbus.brokers.redis.entries import own_entry

    assert "raw-envelope" not in run.implementations("redis")  # counted on its own only
    assert redis.VARIANTS["raw-envelope"] is redis.RawWithEnvelope
    event = make_event(7)
    entry = redis.RawWithEnvelope("", "channel", lambda event: None).entry(event)
    assert own_entry(entry)  # what eventbus's adapter writes, read its fast way
    assert redis.RawWithEnvelope.read(entry[b"data"]) == event
    assert len(entry[b"data"]) > 1.5 * len(encode(event))  # the attributes travel too


def test_the_kafka_wire_bench_writes_records_that_read_back_as_the_same_event() -> None:
    from aiokafka.record.default_records import DefaultRecordBatch  # type: ignore[import-untyped]

    from bench import kafkawire
    from bench.common import make_event
    from eventbus.brokers.kafka.records import read_record
    from eventbus.envelope import from_structured

    payload = make_event(1).model_dump_json().encode()
    binary = list(DefaultRecordBatch(kafkawire.write("binary", 3)))
    structured = list(DefaultRecordBatch(kafkawire.write("structured", 3)))
    read_binary = [read_record(r.headers, r.value, r.key) for r in binary]
    read_structured = [from_structured(r.value) for r in structured]
    assert all(e is not None and e.data == payload for e in read_binary)
    assert [e.data for e in read_structured] == [payload] * 3
    assert (
        {e.type for e in read_structured} == {e.type for e in read_binary if e} == {"UserCreated"}
    )
    results = kafkawire.measure(records=5, repeat=1)
    assert set(results) == set(kafkawire.MODES)
    assert results["payload"]["bytes"] < results["binary"]["bytes"]
