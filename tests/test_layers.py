"""The package layout is the architecture: these tests keep it so.

Every `import` in `sweep/` (module level or inside a function) is read from the source,
so a lazy import cannot hide a cycle or a layer crossed the wrong way.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

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


def _modules() -> dict[str, set[str]]:
    """Each module of sweep/ and workers/ -> the modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for package in ("sweep", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            imported: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
