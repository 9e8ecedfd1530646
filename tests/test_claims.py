"""The project claims only what is built: descriptions, docs and extras follow the code."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the dev extra brings tomli there
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "eventbus"

# A feature that is not built yet, where its code would live, and the words that claim it.
FEATURES = {
    "outbox": ("outbox", r"\boutbox"),
    "telemetry": ("otel", r"\[otel\]|OpenTelemetry|\btracing\s*→|\bmetrics\s*→"),
    "sagas": ("sagas", r"\bsagas?\b"),
    "event store": ("eventstore", r"\bevent[- ]?stores?\b|\bevent sourcing\b"),
    "command line": ("cli", r"`eventbus (worker|dlq|outbox|publish|tail)\b"),
}


def _texts() -> dict[str, str]:
    """What a user reads: the package and site descriptions, the docs, the docstrings."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    site = re.search(r"^site_description:(.*)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    texts = {
        "pyproject.toml description": project["description"],
        "mkdocs.yml site_description": site.group(1) if site else "",
    }
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        texts[str(page.relative_to(ROOT))] = page.read_text()
    for module in SRC.rglob("*.py"):
        tree = ast.parse(module.read_text())
        docstrings = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        texts[str(module.relative_to(ROOT))] = "\n".join(docstrings)
    return texts


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_an_unbuilt_feature_is_not_claimed(feature: str) -> None:
    where, words = FEATURES[feature]
    if (SRC / where).exists() or (SRC / f"{where}.py").exists():
        return  # built: it may be described
    claims = [
        f"{name}: {match.group(0)!r}"
        for name, text in _texts().items()
        for match in re.finditer(words, text, re.I)
    ]
    assert claims == [], f"{feature} is not built (no eventbus/{where}), yet claimed"


def _imported_packages() -> set[str]:
    found: set[str] = set()
    for module in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


def test_every_extra_brings_something_the_library_imports() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    # By distribution name: opentelemetry-api is imported as ``opentelemetry``, say.
    by_module = metadata.packages_distributions()
    imported = {
        name.lower().replace("-", "_")
        for module in _imported_packages()
        for name in by_module.get(module, [module])
    }
    unused = {}
    for extra, requirements in extras.items():
        if extra in ("all", "dev", "bench", "docs", "examples"):  # tools, not features
            continue
        names = {
            re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].replace("-", "_").lower()
            for r in requirements
        }
        if not names & imported:
            unused[extra] = sorted(names)
    assert unused == {}, f"extras whose packages nothing in src/eventbus imports: {unused}"
