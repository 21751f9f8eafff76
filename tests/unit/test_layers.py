"""The layers of docs/ARCHITECTURE.md hold: every import of a project module points to the same layer or
a lower one, and no module reaches itself through its imports (module-level and function-level
imports alike, read from the source, and the packages' ``__init__`` that an import runs first)."""

from __future__ import annotations

import ast
from collections.abc import Iterable

from tests.conftest import REPO

LAYERS: dict[int, tuple[str, ...]] = {
    1: ("serve_app", "wire", "config_common", "metrics", "ports", "errors", "argtypes", "env", "model_ids",
        "models_prepare", "carbon", "registry", "topology", "timeouts", "signals"),
    2: ("classifiers", "energy", "data"),
    3: ("config", "train"),
    4: ("server", "readiness", "validation", "idempotency"),
    5: ("app", "router", "backends", "deployment"),
    6: ("cli", "demo", "replay", "sweep", "report", "monitoring"),
}  # fmt: skip


def _modules() -> dict[str, set[str]]:
    """Module name (``serve_app.x.y``) -> the project modules it imports."""
    root = REPO / "serve_app"
    names = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serve_app"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in names else node.module)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.split(".")[0] == "serve_app"}
        graph[name] = (out | {pkg for t in out for pkg in _packages_run(t, name, names)}) - {name}
    return graph


def _packages_run(target: str, importer: str, names: Iterable[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/b/__init__.py`` first (and what it imports): the packages above
    ``target`` that are not above ``importer`` (those ran before it)."""
    above_importer = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    parts = target.split(".")
    above = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {p for p in above - above_importer if p in names}


def layer_of(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    return next(n for n, names in LAYERS.items() if key in names)


def test_every_module_has_a_layer_and_imports_only_downwards() -> None:
    graph = _modules()
    up = sorted(
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    )
    assert not up, up
    assert len(graph) > 90  # the walk found the package


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, as the path that closes it."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(_modules())
    assert not cycles, cycles
