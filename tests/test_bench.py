"""The benchmark workloads still run: every implementation on every broker, a few events each.

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
