"""The benchmark workloads still run: every implementation on every broker, a few events each,
and the outbox relay benchmark on every database and broker, a few hundred rows each.

These are not measurements (docs/benchmarks.md has those); they keep ``bench/`` from rotting
and check that each implementation delivers every event once its warm-up is through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.outbox.common import has_baseline
from bench.run import implementations

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def trial(broker: str, impl: str, mode: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.trial", broker, impl, mode, "--events", "40"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("impl", implementations("memory"))
@pytest.mark.parametrize("mode", ["single", "batch", "concurrent", "latency"])
def test_memory_workloads_run_every_mode(impl: str, mode: str) -> None:
    result = trial("memory", impl, mode, {})
    assert result["events"] == 40
    assert result["cpu_us_per_event"] > 0
    assert result["unsettled"] == 0
    if mode == "latency":
        assert 0 < result["p50_ms"] <= result["p99_ms"]
    else:
        assert result["e2e_per_s"] > 0
        assert result["publish_per_s"] >= result["e2e_per_s"]


@pytest.mark.parametrize(
    ("broker", "fixture"),
    [("redis", "redis_url"), ("rabbitmq", "rabbitmq_url"), ("kafka", "kafka_url")],
)
def test_network_workloads_deliver_every_event(
    broker: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(fixture)
    env = {f"EVENTBUS_TEST_{broker.upper()}_URL": url}
    for impl in implementations(broker):
        result = trial(broker, impl, "concurrent", env)
        assert result["e2e_per_s"] > 0, impl
        assert result["unsettled"] == 0, (impl, result)


OUTBOX_CASES = [
    pytest.param("sqlite", "memory", id="sqlite-memory"),
    pytest.param("sqlite", "redis", marks=pytest.mark.redis, id="sqlite-redis"),
    pytest.param("sqlite", "rabbitmq", marks=pytest.mark.rabbitmq, id="sqlite-rabbitmq"),
    pytest.param("sqlite", "kafka", marks=pytest.mark.kafka, id="sqlite-kafka"),
    pytest.param("postgresql", "memory", marks=pytest.mark.postgres, id="postgresql-memory"),
    pytest.param(
        "postgresql", "redis", marks=[pytest.mark.postgres, pytest.mark.redis], id="pg-redis"
    ),
    pytest.param(
        "postgresql", "rabbitmq", marks=[pytest.mark.postgres, pytest.mark.rabbitmq], id="pg-amqp"
    ),
    pytest.param(
        "postgresql", "kafka", marks=[pytest.mark.postgres, pytest.mark.kafka], id="pg-kafka"
    ),
]


@pytest.mark.parametrize(("db", "broker"), OUTBOX_CASES)
def test_outbox_trials_relay_every_row(
    db: str, broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A tiny run of ``bench.outbox`` per database and broker, into a temporary results file:
    one ordered relay (and the baseline where it runs); on the memory broker also four relays,
    both orderings, and the staging trial."""
    env = {}
    for server in {db, broker} - {"sqlite", "memory"}:
        kind = "postgres" if server == "postgresql" else server
        env[f"EVENTBUS_TEST_{kind.upper()}_URL"] = request.getfixturevalue(f"{kind}_url")
    out = tmp_path / "outbox.json"
    command = [sys.executable, "-m", "bench.outbox", "--reps", "1", "--scale", "0.03"]
    command += ["--dbs", db, "--brokers", broker, "--no-docs", "--out", str(out)]
    if broker == "memory":
        command += ["--relays", "1,4"]
    else:
        command += ["--relays", "1", "--orderings", "key", "--no-staging"]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["failures"] == []
    trials = results["trials"]
    assert {t["impl"] for t in trials} == (
        {"eventbus", "baseline"} if has_baseline(db, broker, "key", 1) else {"eventbus"}
    )
    for trial in trials:
        assert trial["events_per_s"] > 0
        assert sum(trial["published"]) == trial["events"]
    if broker == "memory":
        assert {(t["ordering"], t["relays"]) for t in trials} == {
            (o, r) for o in ("key", "none") for r in (1, 4)
        }
        assert set(results["staging"][db]) == {"publish", "publish_many"}


@pytest.mark.redis
def test_the_telemetry_benchmark_runs(tmp_path: Path, redis_url: str) -> None:
    """A tiny run of ``bench.otel`` in every configuration, into a temporary results file."""
    out = tmp_path / "otel.json"
    command = [sys.executable, "-m", "bench.otel", "--reps", "1", "--scale", "0.01"]
    done = subprocess.run(
        [*command, "--no-docs", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "EVENTBUS_TEST_REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["summary"]) == {
        f"{b}/{c}" for b in ("memory", "redis") for c in ("off", "api", "sdk", "sampled")
    }
    assert all(t["cpu_us_per_event"] > 0 for t in results["trials"])


@pytest.mark.postgres
def test_the_event_store_benchmark_runs(tmp_path: Path, postgres_url: str) -> None:
    """A tiny run of ``bench.eventstore`` on both databases, into a temporary results file."""
    out = tmp_path / "eventstore.json"
    command = [sys.executable, "-m", "bench.eventstore", "--reps", "1", "--scale", "0.01"]
    done = subprocess.run(
        [*command, "--no-docs", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "EVENTBUS_TEST_POSTGRES_URL": postgres_url},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"sqlite", "postgresql"}
    assert all(cell["median"] > 0 for rows in summary.values() for cell in rows.values())
