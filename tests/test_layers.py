"""The dependency rule, read off the source: the contract imports nothing above it, adapters
import only the contract, middleware only the contract and the context, and no module of
eventbus imports itself in a circle — counting imports inside functions and under
``TYPE_CHECKING``, which break a cycle at run time but not in the design."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"
PACKAGE = SRC / "eventbus"

CONTRACT = {
    "eventbus.errors",
    "eventbus.envelope",
    "eventbus.wirevalues",
    "eventbus.plaindocument",
    "eventbus.event",
    "eventbus.topics",
    "eventbus.types",
    "eventbus.deadletters",
    "eventbus.clock",
    "eventbus.redact",
    "eventbus.logfields",
    "eventbus.lifecycle",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The eventbus module an import names (``from a.b import c`` may name module ``a.b.c``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported eventbus module, line, inside a function) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "eventbus" or name.startswith("eventbus."):
                yield _resolve(name), node.lineno, id(node) in functions


def _edges() -> dict[str, set[str]]:
    return {m: {target for target, _, _ in imports(m) if target != m} for m in MODULES}


def _violations(allowed: set[str], prefix: str) -> list[str]:
    found = []
    for module in MODULES:
        if module != prefix and not module.startswith(prefix + "."):
            continue
        for target, line, _ in imports(module):
            own = target == prefix or target.startswith(prefix + ".")
            if not own and target not in allowed:
                found.append(f"{module}:{line} imports {target}")
    return found


def test_the_contract_imports_nothing_above_it() -> None:
    found = [
        f"{module}:{line} imports {target}"
        for module in sorted(CONTRACT)
        for target, line, _ in imports(module)
        if target not in CONTRACT
    ]
    assert found == []


def test_adapters_import_only_the_contract() -> None:
    assert _violations(CONTRACT, "eventbus.brokers") == []


def test_middleware_imports_only_the_contract_and_the_context() -> None:
    assert _violations(CONTRACT | {"eventbus.context"}, "eventbus.middleware") == []


def test_the_event_store_builds_on_the_contract_and_publishing_only() -> None:
    """And on the two pieces of plain domain code it loads events into, aggregates and the
    upcasters (both import only the contract), and on the router and context through which
    a projection is fed from the bus."""
    allowed = CONTRACT | {
        "eventbus.publishing",
        "eventbus.aggregate",
        "eventbus.upcasting",
        "eventbus.router",
        "eventbus.context",
    }
    assert _violations(allowed, "eventbus.eventstore") == []
    for module in ("eventbus.aggregate", "eventbus.upcasting"):
        assert {t for t, _, _ in imports(module)} <= CONTRACT, module


def test_the_asyncapi_export_reads_the_bus_and_its_routers_only() -> None:
    """It describes what the bus is configured with: no adapter, middleware or outbox code."""
    allowed = CONTRACT | {"eventbus.bus", "eventbus.router"}
    assert _violations(allowed, "eventbus.asyncapi") == []


def test_the_web_integration_builds_on_the_bus_and_the_idempotency_stores_only() -> None:
    """The FastAPI lifespan and dependencies need the bus; the Idempotency-Key middleware the
    store protocol. Neither reaches into the outbox: staging goes through ``bus.publish``."""
    allowed = CONTRACT | {"eventbus.bus", "eventbus.middleware.idempotency"}
    assert _violations(allowed, "eventbus.fastapi") == []
    http = {t for t, _, _ in imports("eventbus.fastapi.idempotency")}
    assert http <= CONTRACT | {"eventbus.middleware.idempotency"}


def test_only_the_testing_package_and_the_command_line_import_the_event_store() -> None:
    """A feature on top: the core, the adapters, the outbox never depend on it."""
    found = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if not module.startswith(("eventbus.eventstore", "eventbus.testing", "eventbus.cli"))
        for target, line, _ in imports(module)
        if target.startswith("eventbus.eventstore")
    ]
    assert found == []


def test_sagas_build_on_the_context_router_inbox_and_outbox_staging_only() -> None:
    """A saga is subscriptions (router), handlers publishing through the context, transitions
    committed in the inbox's transaction with the outbox's staging, and stored state upcast
    with the upcasters: never the bus, the consume policy or an adapter."""
    allowed = CONTRACT | {
        "eventbus.context",
        "eventbus.router",
        "eventbus.upcasting",
        "eventbus.outbox.inbox",
        "eventbus.outbox.store",
    }
    assert _violations(allowed, "eventbus.sagas") == []


def test_only_the_testing_package_and_the_command_line_import_the_sagas() -> None:
    found = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if not module.startswith(("eventbus.sagas", "eventbus.testing", "eventbus.cli"))
        for target, line, _ in imports(module)
        if target.startswith("eventbus.sagas")
    ]
    assert found == []


def test_the_command_line_sits_on_top_and_nothing_imports_it() -> None:
    """``eventbus.cli`` builds on the library's public modules, never on an adapter's
    insides (it reaches adapters through ``from_url``), a feature's insides (the sagas and
    the webhooks through their packages' public names) or the test kit; no module of the
    library imports it."""
    public = {
        *CONTRACT,
        "eventbus.bus",
        "eventbus.publishing",
        "eventbus.router",
        "eventbus.eventstore",
        "eventbus.asyncapi",
        "eventbus.sagas",
        "eventbus.webhooks",
    }
    assert _violations(public, "eventbus.cli") == []
    found = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if not module.startswith("eventbus.cli")
        for target, line, _ in imports(module)
        if target.startswith("eventbus.cli")
    ]
    assert found == []


def test_webhooks_build_on_the_contract_the_router_and_the_idempotency_protocol() -> None:
    """The sender takes events in through a router's subscription and is woken as the outbox
    relay is; the receiver helper deduplicates through the idempotency stores' protocol.
    Nothing else of eventbus."""
    allowed = CONTRACT | {
        "eventbus.router",
        "eventbus.middleware.idempotency",
        "eventbus.outbox.wakeup",
    }
    assert _violations(allowed, "eventbus.webhooks") == []


def test_only_the_command_line_imports_the_webhooks() -> None:
    """A feature on top: the core, the adapters, the outbox never depend on it."""
    found = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if not module.startswith(("eventbus.webhooks", "eventbus.cli"))
        for target, line, _ in imports(module)
        if target.startswith("eventbus.webhooks")
    ]
    assert found == []


def test_no_module_imports_eventbus_inside_a_function() -> None:
    """A function-level import of our own code is how a cycle hides: there is none."""
    found = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        for target, line, inside in imports(module)
        if inside
    ]
    assert found == []


def test_there_is_no_import_cycle() -> None:
    edges = _edges()
    cycles = [cycle for cycle in _cycles(edges) if len(cycle) > 1]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of the import graph (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_stays_readable(module: str) -> None:
    """Around 400 lines a module (450 at most): what a reader can hold in mind at once."""
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 450, f"{module} has {lines} lines: split it by concern"
