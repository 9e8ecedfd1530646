"""A user's ``pip install .`` in a fresh virtual environment: no extras, typed, clear errors."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_a_fresh_install_imports_without_extras(tmp_path: Path) -> None:
    venv.EnvBuilder(with_pip=True).create(tmp_path / "env")
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-cache-dir", str(ROOT)],
        check=True,
        capture_output=True,
    )
    code = """
import importlib.resources, eventbus
from eventbus import EventBus, ConfigurationError
assert importlib.resources.files("eventbus").joinpath("py.typed").is_file()
for url, extra in [("redis://localhost", "redis"), ("amqp://localhost", "rabbitmq"),
                   ("kafka://localhost:9092", "kafka")]:
    try:
        EventBus(url)
    except ConfigurationError as exc:
        assert f'pip install "eventbus[{extra}]"' in str(exc), exc
    else:
        raise AssertionError(f"{url} worked without its driver")
try:
    import eventbus.webhooks
except ConfigurationError as exc:
    assert 'pip install "eventbus[webhooks]"' in str(exc), exc
else:
    raise AssertionError("eventbus.webhooks imported without its extra")
print("ok", eventbus.__version__)
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
    command = subprocess.run(
        [tmp_path / "env" / "bin" / "eventbus", "--help"], capture_output=True, text=True
    )
    assert command.returncode == 1
    assert command.stderr == 'error: the eventbus command needs: pip install "eventbus[cli]"\n'
