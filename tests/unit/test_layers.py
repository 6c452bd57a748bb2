"""The house's layers: imports point one way and never form a circle.

Every `import` and `from ... import` in the source (inside functions too: a lazy import
is still a dependency) is read with `ast`. Layers, lowest first:

    core           settings, logging, ids and times, error types: imports nothing of ours
    celeryconfig   the queue's configuration (core)
    models         tables and the engine (core)
    providers      Twilio and Meta clients (core): what they need they define or receive
    services       the rules, one folder per feature (the layers above)
    api, workers   faces over services
    herald         entry points (CLI, `make run`'s supervisor, embedded PostgreSQL,
                   migrate): nothing imports them

The sandbox stands apart: it imitates the providers and imports nothing of Herald's.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("core", "celeryconfig", "models", "providers", "services", "api", "workers", "herald")
ALLOWED = {
    "core": set(),
    "celeryconfig": {"core"},
    "models": {"core"},
    "providers": {"core"},
    "services": {"core", "celeryconfig", "models", "providers"},
    "api": {"core", "celeryconfig", "models", "services"},
    "workers": {"core", "celeryconfig", "models", "services"},
    "herald": {"core", "celeryconfig", "models", "providers", "services", "api", "workers"},
    "sandbox": set(),
    "migrations": {"core", "models"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for top in (*OURS, "sandbox", "migrations"):
        single = ROOT / f"{top}.py"
        if single.exists():
            found[top] = single
        for path in (ROOT / top).rglob("*.py") if (ROOT / top).is_dir() else ():
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def test_imports_point_down_the_layers() -> None:
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        if source.split(".")[0] != target.split(".")[0]
        and target.split(".")[0] not in ALLOWED[source.split(".")[0]]
    )
    assert wrong == []


def test_no_module_imports_itself_back() -> None:
    edges = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    assert circles == []


def test_services_are_grouped_by_feature() -> None:
    loose = sorted(p.name for p in (ROOT / "services").glob("*.py") if p.name != "__init__.py")
    assert loose == []
