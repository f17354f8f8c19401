"""The project's shape, checked from the sources: who may import whom, no import cycles, short files, a short card.

jobs/      the torch-free job contract: imports none of torch, numpy, model, worker, service, tools
worker/    imports model and jobs, nothing of service/ or tools/
service/   the HTTP API: no torch, numpy, model, worker or tools (the console-script dispatcher excepted)
tools/     benchmarks and launchers: may import everything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("model", "worker", "service", "jobs", "tools")
DISPATCHER = "service/cli.py"
MAX_LINES = 500
MAX_CARD_CHARS = 15_000


def sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level_only: bool) -> set[str]:
    """Absolute names a file imports (relative imports resolved); with module_level_only, only those run on import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("jobs", {"torch", "numpy", "model", "worker", "service", "tools"}),
        ("worker", {"service", "tools"}),
        ("service", {"torch", "numpy", "model", "worker", "tools"}),
        ("model", {"service", "worker", "jobs", "tools"}),
    ],
)
def test_packages_import_only_what_their_layer_allows(package: str, forbidden: set[str]) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imports(path, module_level_only=False) if top(name) in forbidden
        )
        for path in sources(package)
        if str(path.relative_to(ROOT)) != DISPATCHER
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_no_module_level_import_cycle() -> None:
    modules = {module_name(path): path for path in sources(*PACKAGES)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports(path, module_level_only=True):
            while imported and imported not in modules:  # `from a.b import c`: c may be a name, not a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_source_file_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in sources(*PACKAGES, "deploy", "scripts", "tests")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_model_card_is_a_card() -> None:
    assert len((ROOT / "MODEL_CARD.md").read_text(encoding="utf-8")) <= MAX_CARD_CHARS


def test_tests_mirror_the_source_tree() -> None:
    folders = {path.name for path in (ROOT / "tests").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders <= {*PACKAGES, "deploy", "reliability"}, "tests/<package>/ for unit tests, reliability/ for probes"
