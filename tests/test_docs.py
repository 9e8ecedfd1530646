"""The documentation's complete programs run as written.

A code block written as `` ```python title="name.py" `` is a file of a complete example: the
files of one page are written into a fresh directory, then its ``test_*.py`` files run under
pytest and every other file that calls ``asyncio.run`` runs as a script.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r'^```python title="([\w./-]+\.py)"\n(.*?)^```$', re.M | re.S)


def example_files(page: Path) -> dict[str, str]:
    """The titled Python blocks of ``page``, by file name."""
    return dict(_BLOCK.findall(page.read_text()))


PAGES_WITH_EXAMPLES = [page for page in PAGES if example_files(page)]


def test_the_testing_page_has_complete_examples() -> None:
    files = example_files(ROOT / "docs" / "testing.md")
    assert {"billing.py", "test_billing.py"} <= set(files)


@pytest.mark.parametrize(
    "page", PAGES_WITH_EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in PAGES_WITH_EXAMPLES]
)
def test_the_examples_of_a_page_run(page: Path, tmp_path: Path) -> None:
    files = example_files(page)
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    tests = sorted(name for name in files if Path(name).name.startswith("test_"))
    if tests:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"{_count_tests(files, tests)} passed" in run.stdout, run.stdout
    for name in sorted(files):
        if name not in tests and "asyncio.run(" in files[name]:
            command = [sys.executable, name]
            run = subprocess.run(
                command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert run.returncode == 0, f"{name}:\n{run.stdout}{run.stderr}"


def _count_tests(files: dict[str, str], tests: list[str]) -> int:
    return sum(len(re.findall(r"^(?:async )?def test_", files[name], re.M)) for name in tests)
