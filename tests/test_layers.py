"""The package layout is the architecture: these tests keep it so.

Every `import` in `sweep/` and `workers/` (module level or inside a function) is read
from the source, so a lazy import cannot hide a cycle or a layer crossed the wrong way;
only imports under `if TYPE_CHECKING:` (annotations, never run) are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# workers/'s layers, lowest first (workers/__init__.py): each imports only from its own
# layer and the ones before it.
WORKER_LAYERS: tuple[str, ...] = (
    "workers.core",
    "workers.records",
    "workers.checkpoints",
    "workers.formats",
    "workers.model",
    "workers.tasks",
    "workers.compile",
    "workers.runtimes",
    "workers.measure",
    "workers.point",
)
# What the driver imports from workers: the records and tasks, core, and what it must
# check or build itself; the actor (point) only where Ray wraps it.
SWEEP_MAY_IMPORT: tuple[str, ...] = (
    "workers.core",
    "workers.records",
    "workers.tasks",
    "workers.checkpoints",
    "workers.formats.variant",
    "workers.model.export",
    "workers.compile",
)
# A subpackage may not import these (besides the entry, which imports everything).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "sweep.plan": ("sweep.execute", "sweep.store", "sweep.search", "sweep.readers", "sweep.run"),
    "sweep.store": ("sweep.execute", "sweep.search", "sweep.readers", "sweep.run"),
    "sweep.execute": ("sweep.search", "sweep.readers", "sweep.run"),
    "sweep.search": ("sweep.execute", "sweep.run"),
    "sweep.readers": ("sweep.execute", "sweep.run", "sweep.offline"),
    "workers": ("sweep",),
}
# Third-party packages that only one module may import.
ONLY_IN = {"ray": ("sweep.execute.cluster",), "hydra": ("sweep.plan.config",)}


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for annotations only,
    which never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def _modules() -> dict[str, set[str]]:
    """Each module of sweep/ and workers/ -> the modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for package in ("sweep", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            imported: set[str] = set()
            for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
                    imported |= {f"{node.module}.{alias.name}" for alias in node.names}
            graph[name] = imported
    return graph


GRAPH = _modules()


def _internal(deps: set[str]) -> set[str]:
    return {d for d in deps if d in GRAPH}


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No import cycle of any length among sweep/ and workers/ modules."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(_internal(GRAPH[name]) - {name}):
            if dep.startswith(name + "."):
                continue  # a package's own submodule (`from sweep.readers import report`)
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    crossings = [
        f"{name} imports {dep}"
        for name, deps in GRAPH.items()
        if name == layer or name.startswith(layer + ".")
        for dep in deps
        if any(dep == f or dep.startswith(f + ".") for f in FORBIDDEN[layer])
    ]
    assert not crossings, f"{layer} must not import {FORBIDDEN[layer]}: {crossings}"


@pytest.mark.parametrize("package", sorted(ONLY_IN))
def test_one_module_owns_each_framework(package: str) -> None:
    owners = sorted(
        name
        for name, deps in GRAPH.items()
        if any(d == package or d.startswith(package + ".") for d in deps)
    )
    assert owners == list(ONLY_IN[package]), f"{package} is imported by {owners}"


def test_scheduler_imports_no_ray_and_no_hydra() -> None:
    """The scheduler is plain logic: importing it (and all it imports) starts no framework."""
    code = (
        "import sys, sweep.execute.scheduler; "
        "print(*[m in sys.modules for m in ('ray', 'hydra', 'omegaconf', 'jax')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False"] * 4, f"ray, hydra, omegaconf, jax loaded: {out.stdout}"


def _layer(name: str) -> int:
    return next(
        i for i, layer in enumerate(WORKER_LAYERS) if name == layer or name.startswith(layer + ".")
    )


def test_every_workers_module_sits_in_a_layer() -> None:
    strays = [
        n
        for n in GRAPH
        if n.startswith("workers.")
        and not any(n == layer or n.startswith(layer + ".") for layer in WORKER_LAYERS)
    ]
    assert not strays, f"add these to WORKER_LAYERS and workers/__init__.py: {strays}"


def test_workers_layers_import_only_their_own_or_lower() -> None:
    upward = [
        f"{name} imports {dep}"
        for name, deps in GRAPH.items()
        if name.startswith("workers.")
        for dep in _internal(deps)
        if dep.startswith("workers.") and _layer(dep) > _layer(name)
    ]
    assert not upward, f"workers/ layers (workers/__init__.py) crossed upwards: {upward}"


def test_sweep_imports_only_what_the_driver_needs_from_workers() -> None:
    allowed = (*SWEEP_MAY_IMPORT, "workers.point")
    crossings = [
        f"{name} imports {dep}"
        for name, deps in GRAPH.items()
        if name.startswith("sweep")
        for dep in _internal(deps)
        if dep.startswith("workers")
        and not any(dep == a or dep.startswith(a + ".") for a in allowed)
    ]
    assert not crossings, f"sweep/ reaches into workers/: {crossings}"
    actor = sorted(
        name for name, deps in GRAPH.items() if name.startswith("sweep") and "workers.point" in deps
    )
    assert actor == ["sweep.execute.cluster"], f"only the cluster wraps the actor: {actor}"
